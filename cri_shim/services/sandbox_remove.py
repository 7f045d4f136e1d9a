"""RemovePodSandbox: stop it if needed, remove its containers, release everything, forget it. Idempotent.

`remove_by_id` is also the cleanup of a failed or abandoned RunPodSandbox and
of a CREATING sandbox found by restart recovery: every step works from the
sandbox id alone and tolerates finding nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import NotFound
from cri_shim.services import container_events, container_remove, sandbox_stop
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from cri_shim.store.sandbox import SandboxState

log = logging.getLogger(__name__)


async def remove_pod_sandbox(state: RuntimeState,
                             request: pb.RemovePodSandboxRequest) -> pb.RemovePodSandboxResponse:
    sb = state.sandboxes.find(request.pod_sandbox_id) if request.pod_sandbox_id else None
    if sb is None or sb.state is SandboxState.CREATING:
        return pb.RemovePodSandboxResponse()
    async with state.sandbox_locks.hold(sb.id):
        await remove_by_id(state, sb.id)
    return pb.RemovePodSandboxResponse()


async def _remove_container(state: RuntimeState, container_id: str) -> None:
    async with state.container_locks.hold(container_id):
        await container_remove.remove(state, container_id)


async def remove_by_id(state: RuntimeState, sandbox_id: str) -> None:
    sb = state.sandboxes.get(sandbox_id)
    if sb is None:
        return
    for c in state.containers_of(sandbox_id):
        if c.state is ContainerState.CREATING and state.container_inflight.pending(c.name):
            continue   # still being created: that creation fails once the sandbox is gone, and rolls itself back
        await _remove_container(state, c.id)
    try:
        backend = state.backend(sb.handler)
    except NotFound as e:
        log.warning("sandbox %s: %s; removing what the daemon holds", sandbox_id[:13], e.message)
    else:
        await state.failpoints.hit("sandbox_remove.before_remove")
        with mapped(f"cannot remove pod sandbox {sandbox_id}"):
            await backend.remove_sandbox(sandbox_id)
    await sandbox_stop.release_network(state, sandbox_id)
    await asyncio.to_thread(shutil.rmtree, state.sandbox_dir(sandbox_id), True)
    state.sandboxes.delete(sandbox_id)
    state.sandbox_names.release(sb.name, sandbox_id)
    if sb.state is not SandboxState.CREATING:
        log.info("pod sandbox %s removed", sandbox_id[:13])
        container_events.publish(state, sandbox_id, sandbox_id, container_events.DELETED)
