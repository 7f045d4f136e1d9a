"""UpdateContainerResources: apply new limits to the live cgroup, then record them (ContainerStatus.resources).

Synchronous and all-or-nothing from the caller's view: if the backend cannot
apply the update, the call fails and the recorded resources stay as they were.
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition, InvalidArgument
from cri_shim.services import container_spec
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState


async def update_container_resources(state: RuntimeState, request: pb.UpdateContainerResourcesRequest
                                     ) -> pb.UpdateContainerResourcesResponse:
    c = state.container(request.container_id)
    if request.HasField("windows"):
        raise InvalidArgument("windows: this node runs Linux containers")
    if not request.HasField("linux"):
        return pb.UpdateContainerResourcesResponse()
    resources = container_spec.oci_resources(request.linux)
    container_spec.oom_score_adj(request.linux)
    async with state.container_locks.hold(c.id):
        c = state.container(c.id)
        if c.state not in (ContainerState.CREATED, ContainerState.RUNNING):
            raise FailedPrecondition(f"container {c.id} is {c.state.value}; only created or running containers "
                                     "can be updated")
        backend = state.backend_of_container(c)
        with mapped(f"cannot update the resources of container {c.id}"):
            await backend.update_resources(c.id, resources)
        state.containers.put(c.with_(resources=container_spec.resources_dict(request.linux)))
    return pb.UpdateContainerResourcesResponse()
