"""The interface between the daemon (cri_shim) and a runtime backend.

A backend runs pod sandboxes and containers on one operating system
mechanism: `runtime.linux` (namespaces, cgroups, overlayfs, a pod shim),
`runtime.external` (an installed OCI runtime such as runc, driven by the same
pod shim) and `runtime.windows` (the Host Compute Service). The daemon
translates CRI requests into the plain dataclasses below and calls a backend
through the `Backend` protocol; it never reaches past it.

Rules of this contract:
- Nothing here is specific to one OS: Linux- and Windows-only settings live
  in `LinuxSandboxSpec` / `WindowsSandboxSpec`, and container settings travel
  in the OCI runtime spec (`config.json` in the bundle, built by
  `runtime.oci`), which is itself platform-tagged.
- Every method is async: backends talk to monitors (pod shims, HCS) that may
  be slow; blocking work runs off the event loop inside the backend.
- Failures raise the `RuntimeFailure` family below, never a bare OSError; the
  daemon maps them to CRI status codes. Messages say what failed and name the
  spec field when a field is to blame.
- Identifiers are the daemon's: sandbox and container ids are given to the
  backend, which must accept them as-is (64 hex characters).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# ---------------------------------------------------------------- errors


class RuntimeFailure(Exception):
    """Base of every error a backend raises. `message` is shown to the CRI caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ObjectNotFound(RuntimeFailure):
    """The sandbox or container is unknown to the backend."""


class InvalidSpec(RuntimeFailure):
    """The spec asks for something impossible or malformed; `field` names the culprit."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class Unsupported(RuntimeFailure):
    """Valid, but this backend or host cannot honour it (e.g. a cgroup limit the host lacks)."""


class WrongState(RuntimeFailure):
    """The object exists but is in the wrong state for the call (e.g. exec in a stopped container)."""


class MonitorLost(RuntimeFailure):
    """The pod's monitor (shim / HCS system) died or stopped answering within its bound."""


class OperationTimeout(RuntimeFailure):
    """A bounded operation did not finish in time (exec_sync timeout is reported in ExecResult instead)."""


# ---------------------------------------------------------------- sandboxes


class NamespaceMode(enum.Enum):
    POD = "pod"              # shared by the pod's containers
    CONTAINER = "container"  # each container has its own
    NODE = "node"            # the host's
    TARGET = "target"        # another container's (pid only)


@dataclass(frozen=True)
class IdMapping:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class LinuxSandboxSpec:
    cgroup_parent: str                     # cgroupfs path ("/kubepods/pod<uid>") or systemd slice
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD
    netns_path: str | None = None          # pinned netns made by the network layer; None with NODE network
    sysctls: Mapping[str, str] = field(default_factory=dict)
    uid_mappings: tuple[IdMapping, ...] = ()  # non-empty: the pod gets a user namespace
    gid_mappings: tuple[IdMapping, ...] = ()
    privileged: bool = False
    shm_size: int = 64 << 20
    # OCI `linux.resources` of the pod as a whole (overhead + sum of containers), if kubelet sent one.
    resources: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WindowsSandboxSpec:
    host_process: bool = False
    network_namespace: str | None = None  # HCN namespace GUID; None for HostProcess pods
    run_as_username: str = ""
    hyperv: bool = False                  # isolation chosen by the runtime handler


@dataclass(frozen=True)
class SandboxSpec:
    id: str
    name: str                  # "<namespace>/<name>" for logs and naming only
    hostname: str
    sandbox_dir: str           # holds hostname, hosts, resolv.conf written by the daemon
    log_directory: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    linux: LinuxSandboxSpec | None = None
    windows: WindowsSandboxSpec | None = None


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"


@dataclass(frozen=True)
class SandboxStatus:
    id: str
    state: SandboxState
    monitor_pid: int | None = None         # the pod shim (Linux) or None
    namespaces: Mapping[str, str] = field(default_factory=dict)  # kind ("net", "ipc", "uts", "pid") -> path
    message: str = ""


# ---------------------------------------------------------------- containers


@dataclass(frozen=True)
class RootfsSpec:
    """The image layers and the writable layer of one container.

    Linux: `layers` are unpacked snapshot directories, lowest layer first,
    stacked as overlay lowerdirs; `scratch` is a private directory in which the
    backend makes the overlay upper and work dirs. Windows: `layers` are layer
    folders (parent chain), `scratch` is where the sandbox.vhdx goes.
    """

    layers: tuple[str, ...]
    scratch: str
    readonly: bool = False


@dataclass(frozen=True)
class StdioSpec:
    log_path: str | None       # absolute CRI log file; None = no logging
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    id: str
    sandbox_id: str
    bundle_dir: str            # holds config.json (the OCI runtime spec), written by runtime.oci
    rootfs: RootfsSpec
    stdio: StdioSpec
    stop_signal: int = 15      # sent by stop_container before the grace period


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


# Reasons a container ended, as CRI reports them.
REASON_OOM_KILLED = "OOMKilled"
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_START_ERROR = "StartError"   # the start failed: the container never ran its process


@dataclass(frozen=True)
class ContainerStatus:
    id: str
    state: ContainerState
    pid: int | None = None
    created_at: int = 0        # unix nanoseconds
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class ExecSpec:
    args: tuple[str, ...]
    env: tuple[str, ...] | None = None     # None: the container's environment
    cwd: str | None = None                 # None: the container's working dir
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False                # the process (group) was killed at the timeout


class StreamKind(enum.Enum):
    STDOUT = 1
    STDERR = 2


class IOSession(Protocol):
    """Byte streams of an interactive exec or an attach, for the streaming server."""

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def read(self) -> tuple[StreamKind, bytes] | None:
        """Next chunk of output; None once every output stream is at EOF."""
        ...

    async def resize(self, width: int, height: int) -> None: ...

    async def wait(self) -> int:
        """Exec: the exit code. Attach: returns when the container exits (its exit code) or the session closes."""
        ...

    async def close(self) -> None:
        """Detach (attach) or kill (exec) and release every resource of the session."""
        ...


@dataclass(frozen=True)
class ContainerStats:
    timestamp_ns: int
    cpu_usage_ns: int | None = None
    memory_working_set_bytes: int | None = None
    memory_usage_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_available_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    pids: int | None = None
    writable_layer_mountpoint: str = ""
    writable_layer_bytes: int | None = None
    writable_layer_inodes: int | None = None


@dataclass(frozen=True)
class SandboxStats:
    timestamp_ns: int
    cpu_usage_ns: int | None = None
    memory_working_set_bytes: int | None = None
    memory_usage_bytes: int | None = None
    memory_rss_bytes: int | None = None
    pids: int | None = None
    containers: Mapping[str, ContainerStats] = field(default_factory=dict)


class EventKind(enum.Enum):
    EXITED = "exited"          # a container's main process ended (status has exit code and reason)
    MONITOR_LOST = "monitor_lost"  # a pod's monitor died; its containers are reported exited/unknown


@dataclass(frozen=True)
class RuntimeEvent:
    kind: EventKind
    sandbox_id: str
    container_id: str | None
    status: ContainerStatus | None = None


@dataclass(frozen=True)
class HandlerFeatures:
    """What a backend really supports; reported in Status and gating critest suites."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


@dataclass(frozen=True)
class RecoveredSandbox:
    status: SandboxStatus
    containers: tuple[ContainerStatus, ...]


# ---------------------------------------------------------------- the protocol


class SandboxController(Protocol):
    async def create_sandbox(self, spec: SandboxSpec) -> SandboxStatus:
        """Start the pod's monitor and namespaces; READY on return. Undo everything on failure."""
        ...

    async def stop_sandbox(self, sandbox_id: str, timeout: float) -> None:
        """Kill every container of the pod (stop signal, `timeout`, then SIGKILL). Idempotent."""
        ...

    async def remove_sandbox(self, sandbox_id: str) -> None:
        """Stop the monitor and release everything the backend made for the pod. Idempotent."""
        ...

    async def sandbox_status(self, sandbox_id: str) -> SandboxStatus: ...

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStats: ...


class ContainerRuntime(Protocol):
    async def create_container(self, spec: ContainerSpec) -> ContainerStatus:
        """Set up the container (rootfs, process not yet running the user's program): CREATED."""
        ...

    async def start_container(self, container_id: str) -> ContainerStatus: ...

    async def kill_container(self, container_id: str, signal: int) -> None:
        """Deliver `signal`; SIGKILL reaches every process of the container."""
        ...

    async def stop_container(self, container_id: str, timeout: float) -> ContainerStatus:
        """Stop signal, wait up to `timeout` seconds, then SIGKILL; returns the EXITED status."""
        ...

    async def container_status(self, container_id: str) -> ContainerStatus: ...

    async def delete_container(self, container_id: str) -> None:
        """Release the container's resources (it must not be running). Idempotent."""
        ...

    async def update_resources(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Apply OCI `linux.resources` / `windows.resources` to the live container, or raise."""
        ...

    async def reopen_log(self, container_id: str) -> None:
        """Reopen the CRI log at the same path; the file exists again when this returns."""
        ...

    async def exec_sync(self, container_id: str, spec: ExecSpec, timeout: float | None,
                        output_cap: int) -> ExecResult: ...

    async def exec(self, container_id: str, spec: ExecSpec) -> IOSession: ...

    async def attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool) -> IOSession: ...

    async def container_stats(self, container_id: str) -> ContainerStats: ...


class Backend(SandboxController, ContainerRuntime, Protocol):
    """One runtime handler. `recover` is called once at daemon start, before any RPC is served."""

    name: str
    features: HandlerFeatures

    async def recover(self, known_sandboxes: list[str]) -> list[RecoveredSandbox]:
        """Reconnect to live monitors of `known_sandboxes`; report each one's state. Bounded per sandbox."""
        ...

    def subscribe(self, sink: Callable[[RuntimeEvent], None]) -> None:
        """Deliver container exits and monitor deaths to `sink` (called on the event loop)."""
        ...

    async def close(self) -> None:
        """Disconnect from monitors without stopping any container (daemon shutdown)."""
        ...
