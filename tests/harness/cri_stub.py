"""A CRI endpoint with only Version, Exec, Attach and PortForward, so real crictl can drive the streaming server.

It stands in for the daemon's RPC layer until the integrator wires
Exec/Attach/PortForward into cri_shim's RuntimeService: each call goes
through the same `StreamingServer.exec_url/attach_url/portforward_url` the
daemon will call, and `cri_shim.errors` map to gRPC codes as the interceptor
does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc
from cri_shim.errors import CriError
from cri_shim.streaming import StreamingServer

T = TypeVar("T")


class StreamingOnlyRuntime(pb_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def __init__(self, streaming: StreamingServer) -> None:
        self.streaming = streaming

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except CriError as e:
            await context.abort(getattr(grpc.StatusCode, e.code_name), e.message)
            raise

    async def Version(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.VersionResponse(version="0.1.0", runtime_name="cri-shim-streaming-test",
                                  runtime_version="0", runtime_api_version="v1")

    async def Exec(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        url = await self._call(context, lambda: self.streaming.exec_url(
            request.container_id, list(request.cmd), request.tty, request.stdin, request.stdout, request.stderr))
        return pb.ExecResponse(url=url)

    async def Attach(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        url = await self._call(context, lambda: self.streaming.attach_url(
            request.container_id, request.tty, request.stdin, request.stdout, request.stderr))
        return pb.AttachResponse(url=url)

    async def PortForward(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        url = await self._call(context, lambda: self.streaming.portforward_url(
            request.pod_sandbox_id, list(request.port)))
        return pb.PortForwardResponse(url=url)


class EmptyImageService(pb_grpc.ImageServiceServicer):  # type: ignore[misc]
    """crictl checks the image API answers before any command; nothing more is needed here."""

    async def ImageFsInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ImageFsInfoResponse()


async def serve(streaming: StreamingServer, socket_path: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    pb_grpc.add_RuntimeServiceServicer_to_server(StreamingOnlyRuntime(streaming), server)
    pb_grpc.add_ImageServiceServicer_to_server(EmptyImageService(), server)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    return server


