"""PortForward: a URL for forwarding into the pod's network namespace (ports come per stream)."""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition
from cri_shim.services.container_exec import streaming
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.sandbox import SandboxState


async def portforward_url(state: RuntimeState, request: pb.PortForwardRequest) -> pb.PortForwardResponse:
    urls = streaming(state)
    sb = state.sandbox(request.pod_sandbox_id)
    if sb.state is not SandboxState.READY:
        raise FailedPrecondition(f"PortForward: pod sandbox {sb.id} is not ready")
    return pb.PortForwardResponse(url=urls.portforward_url(sb.id, list(request.port)))
