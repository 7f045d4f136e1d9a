"""ListPodSandbox: answered from the in-memory index only (kubelet calls it every second)."""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.services.list_cache import ConvertedCache
from cri_shim.store.records import RecordStore, labels_match
from cri_shim.store.sandbox import Sandbox, SandboxState

CRI_STATE = {SandboxState.READY: pb.SANDBOX_READY, SandboxState.NOTREADY: pb.SANDBOX_NOTREADY}


def visible(sb: Sandbox) -> bool:
    """Half-created sandboxes are never shown (they may still be rolled back)."""
    return sb.state is not SandboxState.CREATING


def to_pod_sandbox(sb: Sandbox) -> pb.PodSandbox:
    return pb.PodSandbox(id=sb.id, metadata=sb.config.metadata, state=CRI_STATE[sb.state],
                         created_at=sb.created_at, labels=sb.config.labels, annotations=sb.config.annotations,
                         runtime_handler=sb.handler)


def matches(sb: Sandbox, f: pb.PodSandboxFilter) -> bool:
    if f.id and not sb.id.startswith(f.id):
        return False
    if f.HasField("state") and CRI_STATE[sb.state] != f.state.state:
        return False
    return labels_match(dict(sb.config.labels), f.label_selector)


def list_pod_sandbox(sandboxes: RecordStore[Sandbox], request: pb.ListPodSandboxRequest,
                     cache: ConvertedCache[Sandbox, pb.PodSandbox] | None = None) -> pb.ListPodSandboxResponse:
    convert = cache.get if cache is not None else to_pod_sandbox
    chosen = sorted((sb for sb in sandboxes.matching(visible) if matches(sb, request.filter)),
                    key=lambda sb: sb.created_at)
    response = pb.ListPodSandboxResponse(items=[convert(sb) for sb in chosen])
    if cache is not None:
        cache.prune({sb.id for sb in sandboxes.values()})
    return response
