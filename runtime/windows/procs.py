"""A running process of a Windows container, whatever runs it (HCS or a HostProcess job).

The backend starts, stops, execs and attaches through `Proc` only; `HcsProc`
maps it onto HcsApi process calls and `JobProc` onto the job object API. All
methods block and are called off the event loop.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from runtime.windows import _abi
from runtime.windows import schema as S
from runtime.windows.hcs import HcsApi, HcsError, ProcessHandle, ProcessInfo
from runtime.windows.jobobject import JobApi, SpawnedProcess

log = logging.getLogger(__name__)

# Bounds of calls that must not hang the daemon (hcsshim uses similar ones).
SIGNAL_TIMEOUT_MS = 30_000
TERMINATE_TIMEOUT_MS = 30_000
MODIFY_TIMEOUT_MS = 30_000


class Proc(Protocol):
    pid: int
    stdin: int | None
    stdout: int | None
    stderr: int | None

    def wait(self, timeout_ms: int) -> int | None:
        """The exit code (uint32 as Windows reports it) or None while running."""
        ...

    def signal(self, signal: S.ProcessSignal) -> None:
        """Deliver a console control event. May block until the process dies (servercore): use a thread."""
        ...

    def terminate(self) -> None:
        """Kill it; a process that already exited is fine."""
        ...

    def resize(self, height: int, width: int) -> None: ...

    def close_stdin(self) -> None: ...

    def close(self) -> None:
        """Release the process handle (exactly once; idempotent)."""
        ...


class HcsProc:
    def __init__(self, hcs: HcsApi, info: ProcessInfo) -> None:
        self._hcs = hcs
        self.handle: ProcessHandle = info.handle
        self.pid = info.pid
        self.stdin, self.stdout, self.stderr = info.stdin, info.stdout, info.stderr

    @staticmethod
    def reopened(hcs: HcsApi, handle: ProcessHandle, pid: int) -> HcsProc:
        """A process reopened after a restart: its stdio pipes are gone with the old daemon."""
        return HcsProc(hcs, ProcessInfo(handle, pid, None, None, None))

    def wait(self, timeout_ms: int) -> int | None:
        doc = self._hcs.wait_process_exit(self.handle, timeout_ms)
        if doc is None:
            return None
        return S.ProcessStatus.parse(json.loads(doc)).exit_code

    def signal(self, signal: S.ProcessSignal) -> None:
        options = json.dumps(S.to_json(S.SignalProcessOptions(signal)))
        try:
            self._hcs.signal_process(self.handle, options, SIGNAL_TIMEOUT_MS)
        except HcsError as e:
            if not e.already_gone:
                raise

    def terminate(self) -> None:
        try:
            self._hcs.terminate_process(self.handle, TERMINATE_TIMEOUT_MS)
        except HcsError as e:
            if not e.already_gone:
                raise

    def resize(self, height: int, width: int) -> None:
        self._modify(S.ProcessModifyRequest.resize(height, width))

    def close_stdin(self) -> None:
        self._modify(S.ProcessModifyRequest.close_stdin())

    def _modify(self, request: S.ProcessModifyRequest) -> None:
        try:
            self._hcs.modify_process(self.handle, json.dumps(S.to_json(request)), MODIFY_TIMEOUT_MS)
        except HcsError as e:
            if e.hr != _abi.HResult.PROCESS_ALREADY_STOPPED:
                raise

    def close(self) -> None:
        self._hcs.close_process(self.handle)


class JobProc:
    """The main process of a HostProcess container (or an exec in it)."""

    def __init__(self, jobs: JobApi, job: int, spawned: SpawnedProcess, *, main: bool) -> None:
        self._jobs = jobs
        self._job = job
        self._main = main
        self.pid = spawned.pid
        self.stdin, self.stdout, self.stderr = spawned.stdin, spawned.stdout, spawned.stderr
        self._exit: int | None = None

    def wait(self, timeout_ms: int) -> int | None:
        if self._exit is None:
            self._exit = self._jobs.wait(self.pid, timeout_ms)
        return self._exit

    def signal(self, signal: S.ProcessSignal) -> None:
        self._jobs.signal(self.pid)

    def terminate(self) -> None:
        if self._main:
            # Killing a HostProcess container means killing its job: every process, not just this one.
            self._jobs.terminate(self._job, 1)
        else:
            self._jobs.kill(self.pid)

    def resize(self, height: int, width: int) -> None:
        pass    # HostProcess containers have no console (no TTY support, as in hcsshim)

    def close_stdin(self) -> None:
        pass    # closing our end of the pipe is all there is

    def close(self) -> None:
        pass    # the job handle is owned by the container, not by its processes
