"""Restart recovery: make the store, the runtime and the disk agree again (containerd's restart.go table).

Run once at startup, before the socket is bound:

1. load the records into memory (from here on lists answer from memory) and
   re-reserve their names;
2. ask each handler's backend to reconnect to its live monitors and report;
3. reconcile each container:
     runtime reports it          -> its state (an exit that happened while
                                    the daemon was down is recorded now);
     runtime does not know it    -> EXITED with an unknown exit code (255),
                                    if the record still said it was alive;
   and each sandbox: a pod whose monitor is gone becomes NOTREADY;
4. roll back every CREATING row (a crash in the middle of RunPodSandbox or
   CreateContainer): nothing half-created stays visible;
5. remove leftovers that no record owns: pod networks (IPs, veths, hostPorts,
   CNI results), netns pins, sandbox and container directories.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from cri_shim.services import container_remove, container_stop, sandbox_remove
from cri_shim.services.container_exits import record_status
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from cri_shim.store.sandbox import SandboxState
from runtime import base

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    sandboxes: int = 0
    containers: int = 0
    rolled_back: list[str] = field(default_factory=list)
    exits_recorded: int = 0
    leftovers_removed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load(state: RuntimeState) -> None:
    """Step 1: records into memory, names reserved."""
    for sb in state.sandboxes.load():
        state.sandbox_names.reserve(sb.name, sb.id)
    for c in state.containers.load():
        state.container_names.reserve(c.name, c.id)


async def recover(state: RuntimeState) -> RecoveryReport:
    started = time.monotonic()
    report = RecoveryReport()
    load(state)
    statuses = await _ask_backends(state)
    report.sandboxes = len(state.sandboxes.values())
    for c in state.containers.values():
        if c.state is ContainerState.CREATING:
            continue
        report.containers += 1
        was = c.state
        st = statuses.get(c.id)
        if st is not None:
            record_status(state, st)
        elif was in (ContainerState.RUNNING, ContainerState.CREATED, ContainerState.UNKNOWN):
            container_stop.forget_lost(state, c.id, "the runtime lost this container while cri-shim was down")
        now = state.containers.get(c.id)
        if now is not None and now.state is ContainerState.EXITED and was is not ContainerState.EXITED:
            report.exits_recorded += 1
    await _roll_back_creating(state, report)
    report.leftovers_removed += await state.network.gc(
        {sb.id for sb in state.sandboxes.values() if sb.network_ready})
    if state.windows.namespaces is not None:   # HCN namespaces of pods that no longer exist (Windows)
        report.leftovers_removed += await asyncio.to_thread(
            state.windows.namespaces.gc, {sb.id for sb in state.sandboxes.values()})
    await asyncio.to_thread(_remove_leftovers, state, report)
    report.seconds = time.monotonic() - started
    log.info("recovered %d sandboxes and %d containers in %.0fms (%d exits recorded, %d half-created objects "
             "rolled back, %d leftovers removed)", report.sandboxes, report.containers, report.seconds * 1000,
             report.exits_recorded, len(report.rolled_back), len(report.leftovers_removed))
    return report


async def _ask_backends(state: RuntimeState) -> dict[str, base.ContainerStatus]:
    by_handler: dict[str, list[str]] = {}
    for sb in state.sandboxes.values():
        by_handler.setdefault(sb.handler, []).append(sb.id)
    statuses: dict[str, base.ContainerStatus] = {}
    for handler, ids in by_handler.items():
        backend = state.handlers.get(handler)
        if backend is None:
            log.warning("%d sandboxes use runtime handler %r, which is not configured: they are NOTREADY",
                        len(ids), handler)
            for sid in ids:
                _mark_notready(state, sid, f"runtime handler {handler!r} is not configured")
            continue
        for recovered in await backend.recover(ids):
            for cs in recovered.containers:
                statuses[cs.id] = cs
            found = state.sandboxes.get(recovered.status.id)
            if found is None:
                continue
            sb = found
            extra = {**sb.extra, "namespaces": dict(recovered.status.namespaces) or sb.extra.get("namespaces", {})}
            if recovered.status.state is not base.SandboxState.READY and sb.state is SandboxState.READY:
                extra["message"] = recovered.status.message
                state.sandboxes.put(sb.with_(state=SandboxState.NOTREADY, extra=extra))
                log.warning("sandbox %s is NOTREADY after restart: %s", sb.id[:13], recovered.status.message)
            elif extra != sb.extra:
                state.sandboxes.put(sb.with_(extra=extra))
    return statuses


def _mark_notready(state: RuntimeState, sandbox_id: str, why: str) -> None:
    sb = state.sandboxes.get(sandbox_id)
    if sb is not None and sb.state is SandboxState.READY:
        state.sandboxes.put(sb.with_(state=SandboxState.NOTREADY, extra={**sb.extra, "message": why}))


async def _roll_back_creating(state: RuntimeState, report: RecoveryReport) -> None:
    for c in list(state.containers.values()):
        if c.state is ContainerState.CREATING:
            log.warning("container %s (%s) was being created when cri-shim stopped: rolling it back", c.id[:13],
                        c.name)
            await _guarded(container_remove.remove(state, c.id), f"container {c.id}")
            report.rolled_back.append(c.id)
    for sb in list(state.sandboxes.values()):
        if sb.state is SandboxState.CREATING:
            log.warning("pod sandbox %s (%s) was being created when cri-shim stopped: rolling it back",
                        sb.id[:13], sb.name)
            await _guarded(sandbox_remove.remove_by_id(state, sb.id), f"sandbox {sb.id}")
            report.rolled_back.append(sb.id)


async def _guarded(work: Awaitable[None], what: str) -> None:
    try:
        await work
    except Exception as e:  # noqa: BLE001 - one stuck object must not stop the daemon from starting
        log.error("restart recovery: cannot roll back %s: %s (it stays, NOTREADY, for a later removal)", what, e)


def _remove_leftovers(state: RuntimeState, report: RecoveryReport) -> None:
    sandbox_ids = {sb.id for sb in state.sandboxes.values()}
    container_ids = {c.id for c in state.containers.values()}
    netns_dir = state.config.state_dir / "netns"
    for name in _entries(netns_dir):
        if name not in sandbox_ids:
            _remove(report, netns_dir / name, pin=True)
    for name in _entries(state.config.root_dir / "sandboxes"):
        if name not in sandbox_ids:
            _remove(report, state.sandbox_dir(name))
    for name in _entries(state.config.root_dir / "containers"):
        if name not in container_ids:
            _remove(report, state.container_dir(name))


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _remove(report: RecoveryReport, path: Path, pin: bool = False) -> None:
    try:
        if pin:
            from runtime.linux import netns   # pins exist only on Linux nodes
            netns.remove(path)
        else:
            shutil.rmtree(path)
    except (OSError, base.RuntimeFailure) as e:
        log.warning("cannot remove leftover %s: %s", path, e)
        return
    log.info("removed leftover %s", path)
    report.leftovers_removed.append(str(path))
