"""Creations that outlive their caller's deadline (CRI-O's resourcestore idea).

kubelet gives RunPodSandbox and CreateContainer a deadline; when it expires it
cancels the call and, later, retries with the same metadata. containerd then
answers "name is reserved" until the first attempt ends, which is the most
common complaint about it. Here the work runs in its own task: a cancelled
caller stops waiting but the work goes on, and a retry with the same name
waits for (or immediately takes) the finished object. If nobody comes back for
a finished object within `claim_timeout`, it is cleaned up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Creation:
    task: asyncio.Task[str]
    abandoned: bool = False
    reaper: asyncio.Task[None] | None = None


class InflightCreations:
    def __init__(self, kind: str, claim_timeout: float) -> None:
        self._kind = kind
        self._claim_timeout = claim_timeout
        self._by_name: dict[str, _Creation] = {}

    def pending(self, name: str) -> bool:
        return name in self._by_name

    async def run(self, name: str, create: Callable[[], Coroutine[Any, Any, str]],
                  cleanup: Callable[[str], Awaitable[None]]) -> str:
        """Run `create` for `name`, or join the creation already running for it; returns the object id."""
        creation = self._by_name.get(name)
        if creation is None:
            creation = _Creation(asyncio.get_running_loop().create_task(create()))
            self._by_name[name] = creation
        elif creation.reaper is not None:
            creation.reaper.cancel()  # a retry came back: it takes the result
            creation.reaper = None
            log.info("%s %s: a retry takes over the creation its first caller abandoned", self._kind, name)
        try:
            result = await asyncio.shield(creation.task)
        except asyncio.CancelledError:
            if creation.reaper is None:
                self._abandon(name, creation, cleanup)
            raise
        except BaseException:
            self._by_name.pop(name, None)
            raise
        self._by_name.pop(name, None)
        return result

    def _abandon(self, name: str, creation: _Creation, cleanup: Callable[[str], Awaitable[None]]) -> None:
        log.info("%s %s: caller gave up (deadline); finishing the creation for a retry", self._kind, name)

        async def reap() -> None:
            try:
                object_id = await asyncio.shield(creation.task)
            except Exception:  # noqa: BLE001 - a failed creation already rolled itself back
                self._by_name.pop(name, None)
                return
            await asyncio.sleep(self._claim_timeout)
            if self._by_name.get(name) is creation:
                self._by_name.pop(name, None)
                log.warning("%s %s (%s): no retry within %.0fs; cleaning it up", self._kind, name, object_id,
                            self._claim_timeout)
                await cleanup(object_id)

        creation.reaper = asyncio.get_running_loop().create_task(reap())
