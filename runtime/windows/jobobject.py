"""HostProcess containers: host processes grouped in a job object, no HCS at all.

A HostProcess container (Kubernetes `windowsOptions.hostProcess`) is a job
object named `JobContainer_<id>` with kill-on-close; its processes run on the
host, in the host network, with the container's layers mounted as a volume
whose path is given in `CONTAINER_SANDBOX_MOUNT_POINT`. Limits follow hcsshim's
`specToLimits`: cpu count and maximum become a hard-capped CPU rate, shares a
weight 1..9, memory a job memory limit.

`JobApi` is the native surface (documented Win32 calls only); `Kernel32Jobs`
implements it on Windows and `testing.fake_jobs.FakeJobs` on Linux.

Not done here (listed as not verified / not supported in the README): running
as another account (LogonUser + CreateProcessAsUser; processes run as the
runtime's account, SYSTEM under the service), bindflt silo mounts at C:\\hpc,
and the job's I/O completion port (exit is watched per main process instead).
"""

from __future__ import annotations

import ctypes as C
import logging
import os
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.base import InvalidSpec, RuntimeFailure
from runtime.windows import _abi

log = logging.getLogger(__name__)

MOUNT_POINT_ENV = "CONTAINER_SANDBOX_MOUNT_POINT"
HOST_PROCESS_ANNOTATION = "microsoft.com/hostprocess-container"
CTRL_BREAK_EVENT = 1


@dataclass(frozen=True)
class JobLimits:
    cpu_rate: int = 0          # 1..10000: hundredths of a percent of all processors, hard cap
    cpu_weight: int = 0        # 1..9
    memory_bytes: int = 0


@dataclass(frozen=True)
class JobProcessSpec:
    command_line: str
    cwd: str
    env: Mapping[str, str]
    stdin: bool


@dataclass(frozen=True)
class SpawnedProcess:
    pid: int
    stdin: int | None          # descriptors (HandleIO = FdIO)
    stdout: int | None
    stderr: int | None


@dataclass(frozen=True)
class JobAccounting:
    cpu_100ns: int
    active_processes: int


class JobApi(Protocol):
    def create(self, name: str) -> int: ...
    def open(self, name: str) -> int | None: ...
    def set_limits(self, job: int, limits: JobLimits) -> None: ...
    def spawn(self, job: int, spec: JobProcessSpec) -> SpawnedProcess: ...
    def wait(self, pid: int, timeout_ms: int) -> int | None:
        """The exit code, or None if still running after `timeout_ms`."""
        ...
    def signal(self, pid: int) -> None:
        """Ask the process to stop (console control event); it may ignore it."""
        ...
    def kill(self, pid: int) -> None:
        """Kill one process (an exec), not the job."""
        ...
    def terminate(self, job: int, exit_code: int) -> None: ...
    def accounting(self, job: int) -> JobAccounting: ...
    def close(self, job: int) -> None: ...


def _int(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSpec(where, f"must be a non-negative integer, not {value!r}")
    return value


def limits(resources: Mapping[str, Any], host_processors: int) -> JobLimits:
    """OCI windows.resources -> job limits (hcsshim jobcontainers specToLimits)."""
    cpu = resources.get("cpu") or {}
    mem = resources.get("memory") or {}
    count = _int(cpu.get("count"), "windows.resources.cpu.count")
    maximum = _int(cpu.get("maximum"), "windows.resources.cpu.maximum")
    shares = _int(cpu.get("shares"), "windows.resources.cpu.shares")
    if sum(1 for v in (count, maximum, shares) if v) > 1:
        raise InvalidSpec("windows.resources.cpu", "count, maximum and shares are mutually exclusive on Windows")
    rate = 0
    if count:
        rate = min(10_000, count * 10_000 // max(1, host_processors))
    elif maximum:
        rate = min(10_000, maximum)
    weight = 1 + 8 * min(shares, 10_000) // 10_000 if shares else 0
    return JobLimits(cpu_rate=max(rate, 1) if (count or maximum) else 0, cpu_weight=weight,
                     memory_bytes=_int(mem.get("limit"), "windows.resources.memory.limit"))


class JobError(RuntimeFailure):
    pass


class Kernel32Jobs:
    """`JobApi` on Windows: kernel32 job objects; processes started with subprocess, then assigned.

    A process is created suspended, assigned to the job and only then resumed
    (NtResumeProcess), so it cannot escape the job by spawning children first.
    """

    def __init__(self, kernel32: Any, ntdll: Any) -> None:
        self._k = kernel32
        self._nt = ntdll
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def _check(self, ok: int, what: str) -> None:
        if not ok:
            raise JobError(f"{what} failed: Windows error {C.get_last_error()}")  # type: ignore[attr-defined,unused-ignore]

    def create(self, name: str) -> int:
        from runtime.windows._marshal import wstr
        # No KILL_ON_JOB_CLOSE: like HCS systems (ShouldTerminateOnLastHandleClosed=false), a HostProcess
        # container survives a daemon restart and is found again by name; removal terminates the job.
        handle = self._k.CreateJobObjectW(None, wstr(name))
        self._check(handle, f"CreateJobObjectW({name})")
        return int(handle)

    def open(self, name: str) -> int | None:
        from runtime.windows._marshal import wstr
        handle = self._k.OpenJobObjectW(_abi.JOB_OBJECT_ALL_ACCESS, 0, wstr(name))
        return int(handle) if handle else None

    def _set(self, job: int, klass: int, info: C.Structure) -> None:
        self._check(self._k.SetInformationJobObject(job, klass, C.byref(info), C.sizeof(info)),
                    "SetInformationJobObject")

    def set_limits(self, job: int, limits: JobLimits) -> None:
        if limits.memory_bytes:
            info = _abi.JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
            info.BasicLimitInformation.LimitFlags = _abi.JOB_OBJECT_LIMIT_JOB_MEMORY
            info.JobMemoryLimit = limits.memory_bytes
            self._set(job, _abi.JobObjectExtendedLimitInformation, info)
        if limits.cpu_rate or limits.cpu_weight:
            rate = _abi.JOBOBJECT_CPU_RATE_CONTROL_INFORMATION()
            if limits.cpu_rate:
                rate.ControlFlags = _abi.JOB_OBJECT_CPU_RATE_CONTROL_ENABLE | _abi.JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP
                rate.Value = limits.cpu_rate
            else:
                rate.ControlFlags = (_abi.JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                                     | _abi.JOB_OBJECT_CPU_RATE_CONTROL_WEIGHT_BASED)
                rate.Value = limits.cpu_weight
            self._set(job, _abi.JobObjectCpuRateControlInformation, rate)

    def spawn(self, job: int, spec: JobProcessSpec) -> SpawnedProcess:
        flags = _abi.CREATE_SUSPENDED | _abi.CREATE_NEW_PROCESS_GROUP | _abi.CREATE_UNICODE_ENVIRONMENT
        proc = subprocess.Popen(spec.command_line, cwd=spec.cwd, env=dict(spec.env), creationflags=flags,
                                stdin=subprocess.PIPE if spec.stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        handle = int(proc._handle)  # type: ignore[attr-defined]
        try:
            self._check(self._k.AssignProcessToJobObject(job, handle), "AssignProcessToJobObject")
            status = self._nt.NtResumeProcess(handle)
            if status:
                raise JobError(f"NtResumeProcess failed: NTSTATUS 0x{status & 0xFFFFFFFF:08X}")
        except BaseException:
            proc.kill()
            raise
        with self._lock:
            self._procs[proc.pid] = proc
        return SpawnedProcess(proc.pid, _detach(proc.stdin), _detach(proc.stdout), _detach(proc.stderr))

    def wait(self, pid: int, timeout_ms: int) -> int | None:
        with self._lock:
            proc = self._procs.get(pid)
        if proc is None:
            return None
        try:
            code = proc.wait(timeout_ms / 1000)
        except subprocess.TimeoutExpired:
            return None
        with self._lock:
            self._procs.pop(pid, None)
        return code

    def signal(self, pid: int) -> None:
        # CTRL_C is ignored by processes in a new group; CTRL_BREAK reaches the group's console handlers.
        self._k.GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid)

    def kill(self, pid: int) -> None:
        with self._lock:
            proc = self._procs.get(pid)
        if proc is not None:
            proc.kill()

    def terminate(self, job: int, exit_code: int) -> None:
        self._check(self._k.TerminateJobObject(job, exit_code), "TerminateJobObject")

    def accounting(self, job: int) -> JobAccounting:
        info = _abi.JOBOBJECT_BASIC_ACCOUNTING_INFORMATION()
        self._check(self._k.QueryInformationJobObject(job, _abi.JobObjectBasicAccountingInformation,
                                                      C.byref(info), C.sizeof(info), None),
                    "QueryInformationJobObject")
        return JobAccounting(int(info.TotalUserTime) + int(info.TotalKernelTime), int(info.ActiveProcesses))

    def close(self, job: int) -> None:
        self._k.CloseHandle(job)


def _detach(f: Any) -> int | None:
    """A descriptor we own, independent of the Popen file object."""
    if f is None:
        return None
    fd = os.dup(f.fileno())
    f.close()
    return fd
