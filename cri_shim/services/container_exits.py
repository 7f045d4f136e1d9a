"""Keep container records in step with what the backend reports (exits, lost monitors, explicit statuses).

`record_status` is the one place a backend `ContainerStatus` becomes the
record's state: called with the answer of create/start/stop, by the backend's
event sink for exits that happen on their own, and by restart recovery.
An exit is recorded once; later reports of the same exit change nothing.
"""

from __future__ import annotations

import logging

from cri_shim.logs import rpc_context
from cri_shim.services import container_events
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import Container, ContainerState
from cri_shim.store.sandbox import SandboxState
from runtime import base

log = logging.getLogger(__name__)

_STATES = {
    base.ContainerState.CREATED: ContainerState.CREATED,
    base.ContainerState.RUNNING: ContainerState.RUNNING,
    base.ContainerState.EXITED: ContainerState.EXITED,
    base.ContainerState.UNKNOWN: ContainerState.UNKNOWN,
}


def exit_reason(status: base.ContainerStatus) -> str:
    if status.reason:
        return status.reason
    return base.REASON_COMPLETED if status.exit_code == 0 else base.REASON_ERROR


def record_status(state: RuntimeState, status: base.ContainerStatus) -> Container | None:
    """Apply `status` to the container's record; returns the updated record (None if unknown or CREATING)."""
    c = state.containers.get(status.id)
    if c is None or c.state is ContainerState.CREATING:
        return None
    new_state = _STATES[status.state]
    if c.state is ContainerState.EXITED:
        return c   # an exit is final: never overwritten by a late or duplicate report
    changes: dict[str, object] = {"state": new_state}
    if status.pid:
        changes["pid"] = status.pid
    if status.started_at:
        changes["started_at"] = status.started_at
    if new_state is ContainerState.EXITED:
        changes.update(finished_at=status.finished_at or c.finished_at, exit_code=status.exit_code,
                       reason=exit_reason(status), message=status.message)
    elif status.message:
        changes["message"] = status.message
    updated = c.with_(**changes)
    if updated == c:
        return c
    state.containers.put(updated)
    if _started(c, updated):
        container_events.publish(state, c.id, c.sandbox_id, container_events.STARTED)
    if new_state is ContainerState.EXITED:
        log.info("container %s exited with %d (%s)", c.id[:13], updated.exit_code, updated.reason)
        container_events.publish(state, c.id, c.sandbox_id, container_events.STOPPED)
    return updated


def _started(before: Container, after: Container) -> bool:
    """The record left CREATED for a container that ran.

    STARTED comes from here rather than from StartContainer: a container that exits at once may have its exit
    event recorded before the start call returns, and STOPPED must never reach a subscriber before STARTED.
    """
    if before.state is not ContainerState.CREATED:
        return False
    return after.state is ContainerState.RUNNING or (
        after.state is ContainerState.EXITED and bool(after.started_at) and after.reason != base.REASON_START_ERROR)


def on_runtime_event(state: RuntimeState, event: base.RuntimeEvent) -> None:
    """The backends' event sink (runs on the event loop)."""
    # The backend's watcher task was started inside some RPC and inherited its log context: not this event's.
    rpc_context.set(f"runtime event {event.kind.value} sandbox={event.sandbox_id[:13]}")
    if event.kind is base.EventKind.EXITED and event.status is not None:
        record_status(state, event.status)
    elif event.kind is base.EventKind.MONITOR_LOST:
        sb = state.sandboxes.get(event.sandbox_id)
        if sb is not None and sb.state is SandboxState.READY:
            extra = {**sb.extra, "message": "the pod's monitor (shim) died"}
            state.sandboxes.put(sb.with_(state=SandboxState.NOTREADY, extra=extra))
            log.warning("sandbox %s is NOTREADY: its pod shim died", sb.id[:13])
