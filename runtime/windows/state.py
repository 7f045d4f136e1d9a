"""What the Windows backend remembers about pods and containers, and its on-disk record.

Compute systems outlive the daemon (they are created with
ShouldTerminateOnLastHandleClosed=false), so after a restart the backend must
know which HCS systems, processes, mounts and utility-VM attachments belong to
which pod. Every transition is written to `<state_dir>/<sandbox id>.json`
(atomically: temp file, fsync, rename) before the call returns.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.base import (ContainerSpec, ContainerState, ContainerStatus, RootfsSpec, SandboxSpec, SandboxState,
                          StdioSpec, WindowsSandboxSpec)
from runtime.windows.hcs import SystemHandle
from runtime.windows.procs import Proc
from runtime.windows.stdio import Broadcast, LogSink, OutputPump

log = logging.getLogger(__name__)


class Isolation(enum.Enum):
    PROCESS = "process"            # a server silo per container (Windows Server containers)
    HYPERV = "hyperv"              # containers inside one utility VM per pod
    HOST_PROCESS = "hostprocess"   # host processes in a job object, host network


@dataclass(eq=False)
class Ctr:
    spec: ContainerSpec
    oci: dict[str, Any]
    state: ContainerState = ContainerState.CREATED
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int | None = None
    # Resources, each recorded as soon as it exists so a crash can release it.
    mounted: bool = False
    volume: str = ""
    lun: int = 0
    shares: tuple[str, ...] = ()
    job_name: str = ""
    # Live only (not persisted).
    system: SystemHandle | None = None
    job: int | None = None
    proc: Proc | None = None
    log: LogSink | None = None
    pumps: list[OutputPump] = field(default_factory=list)
    stdin: int | None = None
    stdin_lock: threading.Lock = field(default_factory=threading.Lock)   # stdin is closed while attach writes
    listeners: Broadcast = field(default_factory=Broadcast)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: threading.Thread | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    def status(self) -> ContainerStatus:
        return ContainerStatus(id=self.id, state=self.state, pid=self.pid, created_at=self.created_at,
                               started_at=self.started_at, finished_at=self.finished_at,
                               exit_code=self.exit_code, reason=self.reason, message=self.message)

    def record(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "oci": self.oci, "state": self.state.value,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "exit_code": self.exit_code, "reason": self.reason, "message": self.message, "pid": self.pid,
                "mounted": self.mounted, "volume": self.volume, "lun": self.lun, "shares": list(self.shares),
                "job_name": self.job_name}

    @staticmethod
    def from_record(r: dict[str, Any]) -> Ctr:
        s = r["spec"]
        spec = ContainerSpec(id=s["id"], sandbox_id=s["sandbox_id"], bundle_dir=s["bundle_dir"],
                             rootfs=RootfsSpec(tuple(s["rootfs"]["layers"]), s["rootfs"]["scratch"],
                                               s["rootfs"]["readonly"]),
                             stdio=StdioSpec(**s["stdio"]), stop_signal=s["stop_signal"])
        return Ctr(spec=spec, oci=r["oci"], state=ContainerState(r["state"]), created_at=r["created_at"],
                   started_at=r["started_at"], finished_at=r["finished_at"], exit_code=r["exit_code"],
                   reason=r["reason"], message=r["message"], pid=r["pid"], mounted=r["mounted"],
                   volume=r["volume"], lun=r["lun"], shares=tuple(r["shares"]), job_name=r["job_name"])


@dataclass(eq=False)
class Pod:
    spec: SandboxSpec
    isolation: Isolation
    state: SandboxState = SandboxState.READY
    containers: dict[str, Ctr] = field(default_factory=dict)
    # Hyper-V: the utility VM, created with the first container (it boots from that container's base layer).
    uvm_id: str = ""
    uvm_scratch: str = ""
    uvm_created: bool = False
    next_lun: int = 1              # LUN 0 of controller 0 is the utility VM's own scratch
    share_refs: dict[str, int] = field(default_factory=dict)
    uvm: SystemHandle | None = None
    uvm_watcher: threading.Thread | None = None
    stopping: bool = False                 # stop_sandbox/remove_sandbox took the utility VM down on purpose
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return self.spec.id

    def record(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec["annotations"] = dict(self.spec.annotations)
        return {"spec": spec, "isolation": self.isolation.value, "state": self.state.value,
                "uvm_id": self.uvm_id, "uvm_scratch": self.uvm_scratch, "uvm_created": self.uvm_created,
                "next_lun": self.next_lun, "share_refs": self.share_refs,
                "containers": [c.record() for c in self.containers.values()]}

    @staticmethod
    def from_record(r: dict[str, Any]) -> Pod:
        s = r["spec"]
        win = WindowsSandboxSpec(**s["windows"]) if s.get("windows") else None
        spec = SandboxSpec(id=s["id"], name=s["name"], hostname=s["hostname"], sandbox_dir=s["sandbox_dir"],
                           log_directory=s["log_directory"], annotations=s["annotations"], windows=win)
        pod = Pod(spec=spec, isolation=Isolation(r["isolation"]), state=SandboxState(r["state"]),
                  uvm_id=r["uvm_id"], uvm_scratch=r["uvm_scratch"], uvm_created=r["uvm_created"],
                  next_lun=r["next_lun"], share_refs=dict(r["share_refs"]))
        for c in r["containers"]:
            ctr = Ctr.from_record(c)
            pod.containers[ctr.id] = ctr
        return pod


class StateStore:
    """One JSON file per pod under `directory`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, sandbox_id: str) -> str:
        return os.path.join(self.directory, f"{sandbox_id}.json")

    def save(self, pod: Pod) -> None:
        data = json.dumps(pod.record(), indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".pod.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(pod.id))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def delete(self, sandbox_id: str) -> None:
        try:
            os.unlink(self.path(sandbox_id))
        except FileNotFoundError:
            pass

    def load_all(self) -> dict[str, Pod]:
        out: dict[str, Pod] = {}
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path) as f:
                    pod = Pod.from_record(json.load(f))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("ignoring unreadable Windows pod record %s: %s", path, e)
                continue
            out[pod.id] = pod
        return out
