from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import ResourceExhausted
from cri_shim.server.interceptor import CriInterceptor, describe_ids, redacted
from cri_shim.server.metrics import Metrics


def test_credentials_are_redacted_recursively() -> None:
    req = pb.PullImageRequest(image=pb.ImageSpec(image="r.example/x:1"), auth=pb.AuthConfig(
        username="alice", password="s3cret", auth="YWxpY2U6czNjcmV0", identity_token="idt", registry_token="rt",
        server_address="r.example"))
    text = str(redacted(req))
    for secret in ("s3cret", "YWxpY2U6czNjcmV0", "idt", "rt\""):
        assert secret not in text
    assert "alice" in text and "r.example" in text
    assert req.auth.password == "s3cret"  # the original is untouched


def test_ids_on_the_log_line() -> None:
    assert describe_ids(pb.StopContainerRequest(container_id="0123456789abcdef0123")) == "container_id=0123456789abc"
    req = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="web", namespace="ns")))
    assert describe_ids(req) == "name=ns/web"
    assert describe_ids(pb.ImageStatusRequest(image=pb.ImageSpec(image="busybox"))) == "image=busybox"


class _Context:
    """The two things the interceptor uses of a grpc.aio ServicerContext: abort, and code/details after one."""

    def __init__(self) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted.append((code, message))
        raise RuntimeError("aborted")   # grpc raises its AbortError here

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


@dataclass
class _Details:
    method: str


def _wrapped_stream(metrics: Metrics, handler: Callable[..., AsyncIterator[pb.ContainerEventResponse]]) -> Any:
    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(handler)
    wrapped = asyncio.run(CriInterceptor(metrics).intercept_service(
        continuation, _Details("/runtime.v1.RuntimeService/GetContainerEvents")))
    return wrapped.unary_stream


def _count(metrics: Metrics, code: str) -> float | None:
    return metrics.registry.get_sample_value("cri_shim_grpc_requests_total",
                                             {"method": "GetContainerEvents", "code": code})


def test_a_stream_its_client_left_is_cancelled_not_an_internal_error() -> None:
    """gRPC closes a stream's generator (GeneratorExit at its yield) when the client cancels mid-send."""
    closed: list[bool] = []

    async def events(request: Any, context: Any) -> AsyncIterator[pb.ContainerEventResponse]:
        try:
            for i in range(10):
                yield pb.ContainerEventResponse(container_id=str(i))
        finally:
            closed.append(True)

    metrics, context = Metrics(), _Context()
    call = _wrapped_stream(metrics, events)

    async def client_leaves_after_one() -> str:
        stream = call(pb.GetEventsRequest(), context)
        first: pb.ContainerEventResponse = await stream.__anext__()
        await stream.aclose()
        return first.container_id

    assert asyncio.run(client_leaves_after_one()) == "0"
    assert closed == [True]            # the handler's own cleanup (unsubscribe) ran at once
    assert context.aborted == []       # no status sent to a client that is gone, no traceback logged
    assert _count(metrics, "CANCELLED") == 1 and _count(metrics, "INTERNAL") is None


def test_a_stream_handler_error_still_aborts_with_its_status() -> None:
    async def events(request: Any, context: Any) -> AsyncIterator[pb.ContainerEventResponse]:
        yield pb.ContainerEventResponse(container_id="0")
        raise ResourceExhausted("event stream fell too far behind; reconnect and relist")

    metrics, context = Metrics(), _Context()
    call = _wrapped_stream(metrics, events)

    async def read_all() -> list[str]:
        return [e.container_id async for e in call(pb.GetEventsRequest(), context)]

    with pytest.raises(RuntimeError, match="aborted"):
        asyncio.run(read_all())
    assert context.aborted == [(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "event stream fell too far behind; reconnect and relist")]
    assert _count(metrics, "RESOURCE_EXHAUSTED") == 1
