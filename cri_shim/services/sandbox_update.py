"""UpdatePodSandboxResources: kubelet tells the runtime a pod was resized in place.

With the cgroupfs driver the pod-level cgroup is kubelet's own (it writes the
new limits there itself), and each container's limits arrive separately
through UpdateContainerResources. So, like containerd without NRI plugins,
there is nothing to apply here beyond checking the sandbox exists.
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition
from cri_shim.services import container_spec
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.sandbox import SandboxState


async def update_pod_sandbox_resources(state: RuntimeState, request: pb.UpdatePodSandboxResourcesRequest
                                       ) -> pb.UpdatePodSandboxResourcesResponse:
    sb = state.sandbox(request.pod_sandbox_id)
    if sb.state is not SandboxState.READY:
        raise FailedPrecondition(f"pod sandbox {sb.id} is not ready")
    for r in (request.overhead, request.resources):
        container_spec.oci_resources(r)   # reject nonsense even though nothing is applied
    return pb.UpdatePodSandboxResourcesResponse()
