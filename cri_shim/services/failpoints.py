"""Test-only failure injection at named steps of the lifecycle handlers (containerd's shim failpoints idea).

Off unless a test turns it on, through `[lifecycle] failpoints` in the
config or the CRI_SHIM_FAILPOINTS environment variable:

    CRI_SHIM_FAILPOINTS="sandbox_run.after_netns=error,container_start.before_start=kill"

Actions: `error` (the handler fails there, so its rollback runs), `kill`
(SIGKILL to the daemon itself: a crash at exactly that point, for the restart
tests), `delay:<seconds>` (a slow step, for the deadline-handover tests).
With nothing configured `hit()` is a dictionary lookup on an empty dict.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

from cri_shim.errors import Internal

log = logging.getLogger(__name__)

ENV_VAR = "CRI_SHIM_FAILPOINTS"


@dataclass(frozen=True)
class Action:
    kind: str            # "error", "kill" or "delay"
    seconds: float = 0.0


def _parse_action(text: str) -> Action:
    if text in ("error", "kill"):
        return Action(text)
    if text.startswith("delay:"):
        try:
            seconds = float(text[len("delay:"):])
        except ValueError:
            raise ValueError(f"{text!r}: delay needs a number of seconds, e.g. delay:2.5") from None
        if seconds < 0:
            raise ValueError(f"{text!r}: the delay cannot be negative")
        return Action("delay", seconds)
    raise ValueError(f"unknown failpoint action {text!r} (want error, kill or delay:<seconds>)")


def parse_failpoints(text: str) -> dict[str, Action]:
    out: dict[str, Action] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, action = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{item!r} is not name=action")
        out[name.strip()] = _parse_action(action.strip())
    return out


class Failpoints:
    def __init__(self, points: dict[str, Action] | None = None) -> None:
        self._points = dict(points or {})
        if self._points:
            log.warning("TEST FAILPOINTS ARE ENABLED: %s", ", ".join(sorted(self._points)))

    @classmethod
    def from_config(cls, configured: str) -> Failpoints:
        text = ",".join(t for t in (configured, os.environ.get(ENV_VAR, "")) if t)
        return cls(parse_failpoints(text))

    @property
    def enabled(self) -> bool:
        return bool(self._points)

    async def hit(self, name: str) -> None:
        action = self._points.get(name)
        if action is None:
            return
        log.warning("failpoint %s: %s", name, action.kind)
        if action.kind == "error":
            raise Internal(f"failpoint {name} injected an error")
        if action.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(3600)  # never reached: SIGKILL cannot be handled
        await asyncio.sleep(action.seconds)
