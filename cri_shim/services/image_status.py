"""ImageStatus: one image by id, id prefix, tag or digest; an empty answer if it is not here.

By id, by any tag and by any repo digest the answer is the same message
(critest compares them field by field), so everything in it comes from the
image record, never from the name used to ask.
"""

from __future__ import annotations

import json

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument
from cri_shim.images.store import ImageStore, ImageView


def to_pb(view: ImageView) -> pb.Image:
    image = pb.Image(id=view.id, repo_tags=list(view.repo_tags), repo_digests=list(view.repo_digests),
                     size=view.size, username=view.username, pinned=view.pinned,
                     spec=pb.ImageSpec(image=view.id))
    if view.uid is not None:
        image.uid.value = view.uid
    return image


def verbose_info(view: ImageView) -> str:
    record = view.record
    c = record.config
    return json.dumps({
        "id": record.id,
        "chainID": record.layers[-1].chain_id if record.layers else "",
        "layers": [{"digest": layer.digest, "mediaType": layer.media_type, "size": layer.size,
                    "diffID": layer.diff_id, "unpacked": layer.unpacked} for layer in record.layers],
        "imageSpec": {"os": c.os, "architecture": c.architecture, "variant": c.variant,
                      "config": {"User": c.user, "Entrypoint": list(c.entrypoint), "Cmd": list(c.cmd),
                                 "Env": list(c.env), "WorkingDir": c.working_dir, "StopSignal": c.stop_signal,
                                 "Volumes": list(c.volumes), "ExposedPorts": list(c.exposed_ports),
                                 "Labels": c.labels}},
    }, sort_keys=True)


def image_status(store: ImageStore, request: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
    text = request.image.image
    if not text:
        raise InvalidArgument("image.image is empty: give an image id, repo:tag or repo@digest")
    record = store.find(text)
    if record is None:
        return pb.ImageStatusResponse()
    view = store.view(record)
    response = pb.ImageStatusResponse(image=to_pb(view))
    if request.verbose:
        response.info["info"] = verbose_info(view)
    return response
