"""ListImages: every image (or the one the filter names), from memory."""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.images.store import ImageStore
from cri_shim.services.image_status import to_pb


def list_images(store: ImageStore, request: pb.ListImagesRequest) -> pb.ListImagesResponse:
    wanted = request.filter.image.image if request.HasField("filter") and request.filter.HasField("image") else ""
    if wanted:
        record = store.find(wanted)
        views = [store.view(record)] if record is not None else []
    else:
        views = store.list_views()
    views.sort(key=lambda v: (v.repo_tags[:1], v.id))
    return pb.ListImagesResponse(images=[to_pb(v) for v in views])
