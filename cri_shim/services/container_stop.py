"""StopContainer: the stop signal, `timeout` seconds, then SIGKILL. Idempotent, also for unknown ids."""

from __future__ import annotations

import logging
import time

from cri_shim.api import api_pb2 as pb
from cri_shim.services.backend_errors import mapped
from cri_shim.services.container_exits import record_status
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from runtime import base

log = logging.getLogger(__name__)

EXIT_UNKNOWN = 255


async def stop_container(state: RuntimeState, request: pb.StopContainerRequest) -> pb.StopContainerResponse:
    c = state.containers.find(request.container_id) if request.container_id else None
    if c is None or c.state is ContainerState.CREATING:
        return pb.StopContainerResponse()   # unknown: already stopped as far as the caller can tell
    async with state.container_locks.hold(c.id):
        await stop(state, c.id, float(max(request.timeout, 0)))
    return pb.StopContainerResponse()


async def stop(state: RuntimeState, container_id: str, timeout: float) -> None:
    """Stop one container (caller holds its lock). CREATED and EXITED containers are left as they are
    (containerd's rule: only RUNNING and UNKNOWN containers are stopped)."""
    c = state.containers.get(container_id)
    if c is None or c.state not in (ContainerState.RUNNING, ContainerState.UNKNOWN):
        return
    backend = state.backend_of_container(c)
    await state.failpoints.hit("container_stop.before_stop")
    try:
        with mapped(f"cannot stop container {container_id}"):
            status = await _stop_in_backend(backend, container_id, timeout)
    except _Gone as e:
        forget_lost(state, container_id, str(e))
        return
    record_status(state, status)
    await state.failpoints.hit("container_stop.after_stop")


class _Gone(Exception):
    """The backend does not know the container (its pod's runtime state is gone)."""


async def _stop_in_backend(backend: base.Backend, container_id: str, timeout: float) -> base.ContainerStatus:
    try:
        return await backend.stop_container(container_id, timeout)
    except base.ObjectNotFound as e:
        raise _Gone(f"the runtime has no trace of the container ({e.message})") from None


def forget_lost(state: RuntimeState, container_id: str, why: str) -> None:
    """The runtime no longer knows a container the record shows alive: record an exit with an unknown code."""
    status = base.ContainerStatus(id=container_id, state=base.ContainerState.EXITED, exit_code=EXIT_UNKNOWN,
                                  finished_at=time.time_ns(), reason=base.REASON_ERROR, message=why)
    record_status(state, status)
