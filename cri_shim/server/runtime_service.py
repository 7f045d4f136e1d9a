"""RuntimeService servicer: unpack the request, call the service module, return.

No logic lives here; error mapping, logging and metrics are the interceptor's.
"""

from __future__ import annotations

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.server.context import DaemonContext
from cri_shim.server.unimplemented import fill_unimplemented
from cri_shim.services import runtime_config, status, version


class RuntimeService:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    async def Version(self, request: pb.VersionRequest, context: grpc.aio.ServicerContext) -> pb.VersionResponse:
        return version.version(request)

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        ctx = self.ctx
        return status.status(ctx.config, ctx.host, ctx.store, ctx.handlers, request)

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest,
                            context: grpc.aio.ServicerContext) -> pb.RuntimeConfigResponse:
        return runtime_config.runtime_config(self.ctx.config)

    async def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                                  context: grpc.aio.ServicerContext) -> pb.UpdateRuntimeConfigResponse:
        runtime_config.update_runtime_config(self.ctx.store, request)
        return pb.UpdateRuntimeConfigResponse()


UNIMPLEMENTED = fill_unimplemented(RuntimeService, pb.DESCRIPTOR.services_by_name["RuntimeService"])
