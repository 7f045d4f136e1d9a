"""PodSandboxStatus: answered from the sandbox record (no shim round trip).

The record is kept current by the lifecycle handlers and by the backend's
events (a pod shim that dies turns its sandbox NOTREADY), so status is as
cheap as a list. `verbose` adds an `info` entry that is a JSON object (crictl
parses values starting with "{").
"""

from __future__ import annotations

import json
import time

from google.protobuf import json_format

from cri_shim.api import api_pb2 as pb
from cri_shim.services import windows_pods
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.services.sandbox_list import CRI_STATE
from cri_shim.store.sandbox import Sandbox


def to_status(sb: Sandbox) -> pb.PodSandboxStatus:
    cfg = sb.config
    status = pb.PodSandboxStatus(
        id=sb.id, metadata=cfg.metadata, state=CRI_STATE[sb.state], created_at=sb.created_at,
        labels=cfg.labels, annotations=cfg.annotations, runtime_handler=sb.handler)
    if not windows_pods.is_windows(sb):
        status.linux.namespaces.options.CopyFrom(cfg.linux.security_context.namespace_options)
    if sb.ips and not sb.host_network:
        status.network.ip = sb.ips[0]
        status.network.additional_ips.extend(pb.PodIP(ip=ip) for ip in sb.ips[1:])
    return status


def info(sb: Sandbox) -> dict[str, str]:
    detail = {
        "id": sb.id, "name": sb.name, "runtimeHandler": sb.handler, "state": sb.state.value,
        "netns": sb.netns_path or "", "ips": list(sb.ips), "cgroupParent": sb.cgroup_parent,
        "sandboxDir": sb.sandbox_dir, "networkReady": sb.network_ready, "message": sb.extra.get("message", ""),
        "config": json_format.MessageToDict(sb.config, preserving_proto_field_name=True),
    }
    return {"info": json.dumps(detail, sort_keys=True)}


def pod_sandbox_status(state: RuntimeState, request: pb.PodSandboxStatusRequest) -> pb.PodSandboxStatusResponse:
    sb = state.sandbox(request.pod_sandbox_id)
    response = pb.PodSandboxStatusResponse(status=to_status(sb), timestamp=time.time_ns())
    if request.verbose:
        response.info.update(info(sb))
    return response
