"""The one place where RPCs are logged, measured and mapped to status codes.

Every CRI call passes through `CriInterceptor`: it sets the logging context
(method and ids), logs one line at info with the outcome and duration (the
request body at debug, secrets redacted), feeds the Prometheus metrics, and
turns domain errors (`cri_shim.errors`) into gRPC status codes. Anything else
that escapes a handler is a bug of ours: the caller gets INTERNAL with a short
message, and the traceback goes to the daemon's log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cri_shim import errors
from cri_shim.logs import rpc_context
from cri_shim.server.metrics import Metrics

log = logging.getLogger("cri_shim.rpc")

# Request fields worth putting on the log line of every RPC.
_ID_FIELDS = ("pod_sandbox_id", "container_id")
_LIST_METHODS = ("ListPodSandbox", "ListContainers", "ListImages", "ListContainerStats", "ListPodSandboxStats")


def _status_code(error: errors.CriError) -> grpc.StatusCode:
    code: grpc.StatusCode = getattr(grpc.StatusCode, error.code_name)
    return code


def describe_ids(request: Message) -> str:
    """Short `key=value` summary of the ids a request is about."""
    parts = []
    fields = request.DESCRIPTOR.fields_by_name
    for name in _ID_FIELDS:
        if name in fields and getattr(request, name):
            parts.append(f"{name.removeprefix('pod_')}={getattr(request, name)[:13]}")
    if "config" in fields and request.HasField("config"):
        meta = getattr(getattr(request, "config"), "metadata", None)
        if meta is not None and meta.name:
            ns = f"{meta.namespace}/" if getattr(meta, "namespace", "") else ""
            parts.append(f"name={ns}{meta.name}")
    if "image" in fields and request.HasField("image"):
        parts.append(f"image={getattr(request, 'image').image}")
    return " ".join(parts)


def redacted(message: Message) -> Message:
    """A copy with every `debug_redact` field (registry credentials) blanked, recursively."""
    copy = type(message)()
    copy.CopyFrom(message)
    _redact(copy)
    return copy


def _redact(message: Message) -> None:
    for fd, value in message.ListFields():
        if fd.GetOptions().debug_redact:
            setattr(message, fd.name, "[redacted]" if fd.type == fd.TYPE_STRING else type(value)())
        elif fd.type == fd.TYPE_MESSAGE and fd.is_repeated and not _is_map(fd):
            for item in value:
                _redact(item)
        elif fd.type == fd.TYPE_MESSAGE and not fd.is_repeated:
            _redact(value)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _body(message: Message) -> str:
    return text_format.MessageToString(redacted(message), as_one_line=True)


class CriInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # CRI has no client-streaming methods

    def _wrap_unary(self, method: str, inner: Callable[..., Awaitable[Message]]) -> Callable[..., Awaitable[Message]]:
        async def call(request: Message, context: grpc.aio.ServicerContext) -> Message:
            rpc = _Call(self._metrics, method, request)
            try:
                response = await inner(request, context)
            except BaseException as exc:  # noqa: BLE001 - every outcome is logged and mapped
                await rpc.fail(exc, context)
                raise
            rpc.succeed(response)
            return response

        return call

    def _wrap_stream(self, method: str, inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Message]]:
        async def call(request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
            rpc = _Call(self._metrics, method, request)
            sent = 0
            try:
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async with contextlib.aclosing(result):   # the handler's cleanup runs now, not at GC
                        async for item in result:
                            sent += 1
                            yield item
                else:
                    await result
            except BaseException as exc:  # noqa: BLE001
                await rpc.fail(exc, context)
                raise
            rpc.succeed(None, f"{sent} messages streamed")

        return call


class _Call:
    """One RPC in flight: sets the logging context, then records exactly one outcome."""

    def __init__(self, metrics: Metrics, method: str, request: Message) -> None:
        self.metrics, self.method, self.request = metrics, method, request
        self.ids = describe_ids(request)
        self.start = time.monotonic()
        rpc_context.set(f"{method} {self.ids}".strip())  # the context is per-RPC task: no reset needed
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s", _body(request))

    def succeed(self, response: Message | None, summary: str = "") -> None:
        self._record(grpc.StatusCode.OK, "")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("response %s", summary or self._summary(response))

    async def fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Record the outcome of `exc`; for domain errors and bugs, abort with the mapped status (raises)."""
        # A stream's client going away reaches the handler as CancelledError while it waits, or as
        # GeneratorExit while a message is being sent (gRPC closes the generator). Neither is an error,
        # and there is no one left to send a status to.
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self._record(grpc.StatusCode.CANCELLED, "cancelled by the client or its deadline")
            return
        if type(exc).__name__ == "AbortError":  # a status was already set (e.g. by a nested abort)
            self._record(context.code() or grpc.StatusCode.UNKNOWN, context.details() or "")
            return
        if isinstance(exc, errors.CriError):
            code, message = _status_code(exc), exc.message
        else:
            log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
            code = grpc.StatusCode.INTERNAL
            message = f"internal error in {self.method} ({type(exc).__name__}); details are in the cri-shim log"
        self._record(code, message)
        await context.abort(code, message)

    def _record(self, code: grpc.StatusCode, message: str) -> None:
        elapsed = time.monotonic() - self.start
        self.metrics.observe_rpc(self.method, code.name, elapsed)
        # The method and ids are already in the line's context prefix.
        if code is grpc.StatusCode.OK:
            log.info("OK in %.1fms", elapsed * 1000)
        else:
            log.info("%s in %.1fms: %s", code.name, elapsed * 1000, message)

    def _summary(self, response: Message | None) -> str:
        if response is None:
            return ""
        if self.method in _LIST_METHODS:
            items = [v for fd, v in response.ListFields() if fd.is_repeated]
            return f"{len(items[0]) if items else 0} items"
        return _body(response)
