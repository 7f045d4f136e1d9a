"""StopPodSandbox: kill every container of the pod, release its network; NOTREADY. Idempotent.

Like containerd, running containers are killed at once (kubelet has already
stopped them with their own grace periods before calling this), the network
is torn down (CNI DEL) and the pinned network namespace removed. kubelet
calls this at least once before RemovePodSandbox, possibly many times.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import NotFound
from cri_shim.services import container_events, container_stop, windows_pods
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from cri_shim.store.sandbox import SandboxState

log = logging.getLogger(__name__)


async def stop_pod_sandbox(state: RuntimeState, request: pb.StopPodSandboxRequest) -> pb.StopPodSandboxResponse:
    sb = state.sandboxes.find(request.pod_sandbox_id) if request.pod_sandbox_id else None
    if sb is None or sb.state is SandboxState.CREATING:
        return pb.StopPodSandboxResponse()
    async with state.sandbox_locks.hold(sb.id):
        await stop(state, sb.id)
    return pb.StopPodSandboxResponse()


async def _stop_container(state: RuntimeState, container_id: str) -> None:
    async with state.container_locks.hold(container_id):
        await container_stop.stop(state, container_id, 0)


async def stop(state: RuntimeState, sandbox_id: str) -> None:
    """Stop the pod (caller holds its lock); works for CREATING sandboxes too (rollback, recovery)."""
    sb = state.sandboxes.get(sandbox_id)
    if sb is None:
        return
    if sb.state is SandboxState.READY:
        # NOTREADY from the start: no new container is created in a pod being stopped, and one being created
        # right now fails with that reason (its init dies with the pod's PID namespace).
        state.sandboxes.put(sb.with_(state=SandboxState.NOTREADY))
        log.info("stopping pod sandbox %s", sandbox_id[:13])
        container_events.publish(state, sandbox_id, sandbox_id, container_events.STOPPED)
    alive = [c.id for c in state.containers_of(sandbox_id)
             if c.state in (ContainerState.RUNNING, ContainerState.UNKNOWN)]
    results = await asyncio.gather(*(_stop_container(state, cid) for cid in alive), return_exceptions=True)
    for cid, result in zip(alive, results):
        if isinstance(result, BaseException):
            log.warning("sandbox %s: stopping container %s failed: %s", sandbox_id[:13], cid[:13], result)
    try:
        backend = state.backend(sb.handler)
    except NotFound as e:
        log.warning("sandbox %s: %s", sandbox_id[:13], e.message)
    else:
        await state.failpoints.hit("sandbox_stop.before_stop")
        with mapped(f"cannot stop pod sandbox {sandbox_id}"):
            await backend.stop_sandbox(sandbox_id, 0)
    await release_network(state, sandbox_id)


async def release_network(state: RuntimeState, sandbox_id: str) -> None:
    """CNI DEL (once) and the netns pin. Safe to repeat; a failure leaves network_ready set for a retry."""
    sb = state.sandboxes.get(sandbox_id)
    if sb is not None and windows_pods.is_windows(sb):
        with mapped(f"cannot release the network of pod sandbox {sandbox_id}"):
            await windows_pods.release_network(state, sb)
        return
    if sb is None or sb.netns_path is None:
        return
    from runtime.linux import netns   # Linux only: not imported on a Windows node
    netns_path = sb.netns_path
    if sb.network_ready:
        await state.failpoints.hit("sandbox_stop.before_network_teardown")
        await state.network.teardown(sb.id, netns_path, sb.config)
        state.sandboxes.put(sb.with_(network_ready=False))
    with mapped(f"cannot remove the network namespace of pod sandbox {sandbox_id}"):
        await asyncio.to_thread(netns.remove, Path(netns_path))
