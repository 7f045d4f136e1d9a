"""RemoveContainer: kill it if it runs, release everything, forget it. Idempotent, also for unknown ids.

Log files are kubelet's to delete (it owns /var/log/pods); the container's
bundle and writable layer are ours.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import NotFound
from cri_shim.services import container_events, container_stop
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from runtime import base

log = logging.getLogger(__name__)


async def remove_container(state: RuntimeState, request: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
    c = state.containers.find(request.container_id) if request.container_id else None
    if c is None or c.state is ContainerState.CREATING:
        return pb.RemoveContainerResponse()
    async with state.container_locks.hold(c.id):
        await remove(state, c.id)
    return pb.RemoveContainerResponse()


async def remove(state: RuntimeState, container_id: str) -> None:
    """Remove one container in any state, CREATING included (rollback, recovery). Caller holds its lock."""
    c = state.containers.get(container_id)
    if c is None:
        return
    try:
        backend: base.Backend | None = state.backend_of_container(c)
    except NotFound as e:
        log.warning("container %s: %s; removing what the daemon holds", container_id[:13], e.message)
        backend = None
    if backend is not None:
        if c.state in (ContainerState.RUNNING, ContainerState.UNKNOWN):
            await container_stop.stop(state, container_id, 0)
        await state.failpoints.hit("container_remove.before_delete")
        with mapped(f"cannot remove container {container_id}"):
            await backend.delete_container(container_id)
    await state.failpoints.hit("container_remove.after_delete")
    await asyncio.to_thread(release_files, state, container_id, len(c.config.mounts))
    state.containers.delete(container_id)
    state.container_names.release(c.name, container_id)
    if c.state is not ContainerState.CREATING:
        log.info("container %s removed", container_id[:13])
        container_events.publish(state, container_id, c.sandbox_id, container_events.DELETED)


def release_files(state: RuntimeState, container_id: str, image_volumes: int = 0) -> None:
    """The image references (its image, its image volumes) and the container's directory."""
    state.images.remove_user(container_id)
    for i in range(image_volumes):
        state.images.remove_user(f"{container_id}:volume{i}")
    shutil.rmtree(state.container_dir(container_id), ignore_errors=True)
