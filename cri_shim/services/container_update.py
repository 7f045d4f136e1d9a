"""UpdateContainerResources: apply new limits to the live cgroup, then record them (ContainerStatus.resources).

Synchronous and all-or-nothing from the caller's view: if the backend cannot
apply the update, the call fails and the recorded resources stay as they were.
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition, InvalidArgument
from cri_shim.services import container_spec, windows_pods
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import Container, ContainerState


async def update_container_resources(state: RuntimeState, request: pb.UpdateContainerResourcesRequest
                                     ) -> pb.UpdateContainerResourcesResponse:
    c = state.container(request.container_id)
    sb = state.sandboxes.get(c.sandbox_id)
    if sb is not None and windows_pods.is_windows(sb):
        return await _update_windows(state, c.id, request)
    if request.HasField("windows"):
        raise InvalidArgument("windows: this container runs in a Linux pod; send linux resources")
    if not request.HasField("linux"):
        return pb.UpdateContainerResourcesResponse()
    resources = container_spec.oci_resources(request.linux)
    container_spec.oom_score_adj(request.linux)
    async with state.container_locks.hold(c.id):
        c = _updatable(state, c.id)
        backend = state.backend_of_container(c)
        with mapped(f"cannot update the resources of container {c.id}"):
            await backend.update_resources(c.id, resources)
        state.containers.put(c.with_(resources=container_spec.resources_dict(request.linux)))
    return pb.UpdateContainerResourcesResponse()


async def _update_windows(state: RuntimeState, container_id: str, request: pb.UpdateContainerResourcesRequest
                          ) -> pb.UpdateContainerResourcesResponse:
    resources = windows_pods.update_request(request)
    if resources is None:
        return pb.UpdateContainerResourcesResponse()
    async with state.container_locks.hold(container_id):
        c = _updatable(state, container_id)
        backend = state.backend_of_container(c)
        with mapped(f"cannot update the resources of container {c.id}"):
            await backend.update_resources(c.id, resources)
        state.containers.put(c.with_(resources=windows_pods.resources_record(request.windows)))
    return pb.UpdateContainerResourcesResponse()


def _updatable(state: RuntimeState, container_id: str) -> Container:
    c = state.container(container_id)
    if c.state not in (ContainerState.CREATED, ContainerState.RUNNING):
        raise FailedPrecondition(f"container {c.id} is {c.state.value}; only created or running containers "
                                 "can be updated")
    return c
