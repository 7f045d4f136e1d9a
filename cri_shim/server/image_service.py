"""ImageService servicer: thin delegation to cri_shim.services.

Blocking work (SQLite writes, garbage collection, walking the store) runs on
worker threads, never on the event loop. PullImage passes the caller's
deadline down: the pull itself runs on threads and is cancelled once every
caller waiting for it has gone.
"""

from __future__ import annotations

import asyncio

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import DeadlineExceeded
from cri_shim.server.context import DaemonContext
from cri_shim.server.unimplemented import fill_unimplemented
from cri_shim.services import image_list, image_pull, image_remove, image_status, imagefs_info


class ImageService:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    async def PullImage(self, request: pb.PullImageRequest,
                        context: grpc.aio.ServicerContext) -> pb.PullImageResponse:
        try:
            return await image_pull.pull_image(self.ctx.images, request, context.time_remaining())
        except DeadlineExceeded:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                # The caller has gone and gRPC has already told it DEADLINE_EXCEEDED; a status sent now
                # would fail. End the call the way gRPC ends calls whose deadline passed: cancelled.
                raise asyncio.CancelledError() from None
            raise

    async def ImageStatus(self, request: pb.ImageStatusRequest,
                          context: grpc.aio.ServicerContext) -> pb.ImageStatusResponse:
        return image_status.image_status(self.ctx.images, request)

    async def ListImages(self, request: pb.ListImagesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListImagesResponse:
        return image_list.list_images(self.ctx.images, request)

    async def RemoveImage(self, request: pb.RemoveImageRequest,
                          context: grpc.aio.ServicerContext) -> pb.RemoveImageResponse:
        return await asyncio.to_thread(image_remove.remove_image, self.ctx.images, request)

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest,
                          context: grpc.aio.ServicerContext) -> pb.ImageFsInfoResponse:
        usage = await asyncio.to_thread(self.ctx.images.disk_usage)
        return imagefs_info.image_fs_info(usage, self.ctx.config.root_dir)


UNIMPLEMENTED = fill_unimplemented(ImageService, pb.DESCRIPTOR.services_by_name["ImageService"])
