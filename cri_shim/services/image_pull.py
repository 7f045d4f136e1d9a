"""PullImage: validate the reference, take the credentials, pull, return the image id.

The image id (`sha256:` + config digest) is the `image_ref` kubelet stores and
later passes to CreateContainer; ListImages, ImageStatus and ContainerStatus
report the same string.
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument
from cri_shim.images import auth, reference
from cri_shim.images.auth import Credentials
from cri_shim.images.store import ImageStore


def credentials(request: pb.PullImageRequest, registry: str) -> Credentials | None:
    if not request.HasField("auth"):
        return None
    a = request.auth
    return auth.from_request(registry, username=a.username, password=a.password, auth=a.auth,
                             server_address=a.server_address, identity_token=a.identity_token,
                             registry_token=a.registry_token)


async def pull_image(store: ImageStore, request: pb.PullImageRequest, timeout: float | None) -> pb.PullImageResponse:
    text = request.image.image
    if not text:
        raise InvalidArgument("image.image is empty: give the image to pull (e.g. registry.k8s.io/pause:3.10)")
    lookup = reference.parse_lookup(text)
    creds = credentials(request, lookup.reference.domain) if lookup.reference is not None else None
    image_id = await store.pull(text, creds, timeout)
    return pb.PullImageResponse(image_ref=image_id)
