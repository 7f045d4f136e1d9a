"""ImageService servicer: thin delegation to cri_shim.services."""

from __future__ import annotations

import asyncio

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.server.context import DaemonContext
from cri_shim.server.unimplemented import fill_unimplemented
from cri_shim.services import imagefs_info


class ImageService:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest,
                          context: grpc.aio.ServicerContext) -> pb.ImageFsInfoResponse:
        # Walking the store is blocking I/O: keep it off the event loop.
        return await asyncio.to_thread(imagefs_info.image_fs_info, self.ctx.image_dirs, self.ctx.config.root_dir)


UNIMPLEMENTED = fill_unimplemented(ImageService, pb.DESCRIPTOR.services_by_name["ImageService"])
