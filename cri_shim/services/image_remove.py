"""RemoveImage: the image and all its names go at once; removing what is not here is OK.

Idempotent and safe when called concurrently (critest removes one id from 5
goroutines): the metadata change is one transaction under the store lock,
and disk space is reclaimed by garbage collection, which keeps the snapshots
of containers still using the image.
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument
from cri_shim.images.store import ImageStore


def remove_image(store: ImageStore, request: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
    text = request.image.image
    if not text:
        raise InvalidArgument("image.image is empty: give the image id, repo:tag or repo@digest to remove")
    store.remove(text)
    return pb.RemoveImageResponse()
