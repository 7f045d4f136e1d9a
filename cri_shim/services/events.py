"""Container lifecycle events for GetContainerEvents (kubelet's evented PLEG, `crictl events`).

Each subscriber gets its own bounded queue. A subscriber that falls behind is
disconnected rather than allowed to grow memory without limit; kubelet then
reconnects and relists, which is what its evented PLEG does on stream errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import ResourceExhausted

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000


class EventBroadcaster:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[pb.ContainerEventResponse | None]] = set()

    def publish(self, event: pb.ContainerEventResponse) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() >= QUEUE_LIMIT:
                log.warning("event subscriber fell %d events behind; disconnecting it", QUEUE_LIMIT)
                self._subscribers.discard(queue)
                queue.put_nowait(None)
                continue
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[pb.ContainerEventResponse]:
        queue: asyncio.Queue[pb.ContainerEventResponse | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    raise ResourceExhausted("event stream fell too far behind; reconnect and relist")
                yield event
        finally:
            self._subscribers.discard(queue)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
