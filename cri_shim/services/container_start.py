"""StartContainer: CREATED -> RUNNING. The pod shim starts copying output into the CRI log.

A start that fails leaves the container EXITED with reason StartError and the
error as its message (what the shim records), so kubelet sees why.
"""

from __future__ import annotations

import contextlib
import logging

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import CriError, FailedPrecondition
from cri_shim.services import phases
from cri_shim.services.backend_errors import mapped
from cri_shim.services.container_exits import record_status
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from cri_shim.store.sandbox import SandboxState
from runtime import base

log = logging.getLogger(__name__)


async def start_container(state: RuntimeState, request: pb.StartContainerRequest) -> pb.StartContainerResponse:
    c = state.container(request.container_id)
    async with state.container_locks.hold(c.id):
        await start(state, c.id)
    return pb.StartContainerResponse()


async def start(state: RuntimeState, container_id: str) -> None:
    c = state.container(container_id)
    if c.state is not ContainerState.CREATED:
        raise FailedPrecondition(f"container {c.id} is {c.state.value}, not created: a container starts once "
                                 "(kubelet creates a new attempt to restart)")
    sb = state.sandboxes.get(c.sandbox_id)
    if sb is None or sb.state is not SandboxState.READY:
        raise FailedPrecondition(f"the pod sandbox {c.sandbox_id} of container {c.id} is not ready")
    backend = state.backend(sb.handler)
    await state.failpoints.hit("container_start.before_start")
    try:
        with state.phases.time(phases.START, c.id), mapped("cannot start the container"):
            status = await backend.start_container(c.id)
    except CriError:
        await _refresh(state, backend, c.id)
        raise
    record_status(state, status)   # publishes STARTED (and STOPPED if it already exited)
    await state.failpoints.hit("container_start.after_start")
    log.info("container %s started", c.id[:13])


async def _refresh(state: RuntimeState, backend: base.Backend, container_id: str) -> None:
    """After a failed start, record what the runtime now says (normally EXITED, StartError)."""
    with contextlib.suppress(base.RuntimeFailure):
        record_status(state, await backend.container_status(container_id))
