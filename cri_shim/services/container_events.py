"""GetContainerEvents: CREATED/STARTED/STOPPED/DELETED with the pod's status and its containers' statuses.

Events are published by the handlers after the record changed, so a
subscriber that relists on an event sees the new state. Sandboxes emit the
same event types with their own id as container_id (what containerd does for
kubelet's evented PLEG).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from cri_shim.api import api_pb2 as pb
from cri_shim.services import container_status, sandbox_status
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState

CREATED = pb.CONTAINER_CREATED_EVENT
STARTED = pb.CONTAINER_STARTED_EVENT
STOPPED = pb.CONTAINER_STOPPED_EVENT
DELETED = pb.CONTAINER_DELETED_EVENT


def publish(state: RuntimeState, object_id: str, sandbox_id: str, kind: int) -> None:
    """Send one event; a no-op without subscribers (kubelet's evented PLEG is off by default)."""
    if not state.events.subscriber_count:
        return
    event = pb.ContainerEventResponse(container_id=object_id, container_event_type=kind,  # type: ignore[arg-type]
                                      created_at=time.time_ns())
    sb = state.sandboxes.get(sandbox_id)
    if sb is not None:
        event.pod_sandbox_status.CopyFrom(sandbox_status.to_status(sb))
    event.containers_statuses.extend(
        container_status.to_status(c) for c in state.containers_of(sandbox_id)
        if c.state is not ContainerState.CREATING)
    state.events.publish(event)


async def get_container_events(state: RuntimeState,
                               request: pb.GetEventsRequest) -> AsyncIterator[pb.ContainerEventResponse]:
    async for event in state.events.subscribe():
        yield event
