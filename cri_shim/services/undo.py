"""An explicit undo stack for multi-step handlers (RunPodSandbox, CreateContainer, ...).

Each step that changes the world pushes how to take the change back. If the
handler fails (or is cancelled), the steps are undone in reverse order; an undo
that itself fails is logged and the rest still run, so one stuck resource does
not leak all the others. `commit()` on success drops the stack.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)

UndoStep = Callable[[], Awaitable[None] | None]


class UndoStack:
    def __init__(self, what: str) -> None:
        self._what = what
        self._steps: list[tuple[str, UndoStep]] = []

    def push(self, description: str, step: UndoStep) -> None:
        self._steps.append((description, step))

    def commit(self) -> None:
        self._steps.clear()

    async def rollback(self) -> None:
        while self._steps:
            description, step = self._steps.pop()
            try:
                result = step()
                if result is not None:
                    await result
            except Exception:  # noqa: BLE001 - keep undoing the rest
                log.exception("%s: rollback step %r failed", self._what, description)

    async def __aenter__(self) -> UndoStack:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None:
            await self.rollback()
