"""ReopenContainerLog: after kubelet renamed the log, reopen it at the same path (it exists on return).

Only a running container has a log writer; for any other the call fails and
creates no file (the second behaviour the CRI allows).
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState


async def reopen_container_log(state: RuntimeState, request: pb.ReopenContainerLogRequest
                               ) -> pb.ReopenContainerLogResponse:
    c = state.container(request.container_id)
    if c.state is not ContainerState.RUNNING:
        raise FailedPrecondition(f"container {c.id} is {c.state.value}, not running: its log is not reopened")
    if not c.log_path:
        raise FailedPrecondition(f"container {c.id} has no log path (the pod has no log_directory or the "
                                 "container no log_path)")
    backend = state.backend_of_container(c)
    with mapped(f"cannot reopen the log of container {c.id}"):
        await backend.reopen_log(c.id)
    return pb.ReopenContainerLogResponse()
