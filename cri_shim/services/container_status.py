"""ContainerStatus: answered from the container record (kept current by the handlers and exit events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from cri_shim.api import api_pb2 as pb
from cri_shim.services import windows_pods
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import CRI_STATE, Container


def resources_message(c: Container) -> pb.ContainerResources | None:
    if not c.resources:
        return None
    windows = windows_pods.resources_message(c.resources)
    if windows is not None:
        return windows
    linux = json_format.ParseDict(c.resources, pb.LinuxContainerResources())
    return pb.ContainerResources(linux=linux)


def to_status(c: Container) -> pb.ContainerStatus:
    cfg = c.config
    status = pb.ContainerStatus(
        id=c.id, metadata=cfg.metadata, state=CRI_STATE[c.state], created_at=c.created_at,
        started_at=c.started_at, finished_at=c.finished_at, exit_code=c.exit_code,
        # kubelet creates containers from the image id and shows status.image as the pod's image name
        # (`kubectl get pod`); like CRI-O, answer the name the user asked for when kubelet sent it.
        image=pb.ImageSpec(image=cfg.image.user_specified_image or c.image_name, annotations=cfg.image.annotations,
                           user_specified_image=cfg.image.user_specified_image),
        image_ref=c.image_ref, image_id=c.image_id, reason=c.reason, message=c.message,
        labels=cfg.labels, annotations=cfg.annotations, mounts=cfg.mounts, log_path=c.log_path,
        stop_signal=c.extra.get("stop_signal_cri", 0))
    for index, image_id in (c.extra.get("image_volumes") or {}).items():
        status.mounts[int(index)].image.image_ref = image_id   # the digest of what is mounted
    resources = resources_message(c)
    if resources is not None:
        status.resources.CopyFrom(resources)
    if c.user:
        status.user.linux.uid = int(c.user["uid"])
        status.user.linux.gid = int(c.user["gid"])
        status.user.linux.supplemental_groups.extend(int(g) for g in c.user.get("groups", []))
    return status


def info(c: Container) -> dict[str, str]:
    spec: Any = None
    if c.bundle_dir:
        try:
            spec = json.loads((Path(c.bundle_dir) / "config.json").read_text())
        except (OSError, ValueError):
            spec = None
    detail = {
        "sandboxID": c.sandbox_id, "pid": c.pid, "bundle": c.bundle_dir, "runtimeSpec": spec,
        "config": json_format.MessageToDict(c.config, preserving_proto_field_name=True),
    }
    return {"info": json.dumps(detail, sort_keys=True)}


def container_status(state: RuntimeState, request: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
    c = state.container(request.container_id)
    response = pb.ContainerStatusResponse(status=to_status(c))
    if request.verbose:
        response.info.update(info(c))
    return response
