"""The pod shim: one per pod, the monitor that outlives the daemon.

Forked by the zygote (never by the daemon), single-threaded, in its own
session, a child subreaper, placed in `<pod cgroup>/monitor` on purpose (the
pod pays for its monitor, as CRI-O's conmon with monitor_cgroup="pod"). It

- pins the pod's IPC and UTS namespaces with bind mounts under the pod's state
  dir (no pause process), and runs a minimal PID 1 only when the pod shares a
  PID namespace;
- forks each container's init and exec'd processes directly (runtime.linux.init);
- holds their stdio, writes the CRI log files, serves attach;
- writes each container's exit status to `containers/<id>/exit.json` the
  moment it is reaped (OOM kills read from the cgroup first), so exits are
  known even while the daemon is down;
- reaps every orphan.

It talks to the daemon over `<pod dir>/sock` with runtime.linux.protocol.
The shim stays in the host's namespaces itself; children join the pod's.

Memory: every page a shim writes after the fork stops being shared with the
zygote, so the shim keeps its steady state small on purpose: it logs only
warnings and errors (through the zygote's handler, to `<state>/zygote.log`,
with the shim's pid), and it imports nothing the zygote has not imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

from runtime.linux import cgroups
from runtime.linux import init as cinit
from runtime.linux import mounts
from runtime.linux import protocol as proto
from runtime.linux import shim_runc
from runtime.linux import syscalls as sc
from runtime.base import REASON_START_ERROR, RuntimeFailure
from runtime.linux.logs import CriLogWriter
from runtime.linux.spec import (ShimView, SpecError, check_sysctl, id_mappings, read_spec, shim_view,
                                sysctl_path)

T = TypeVar("T")
log = logging.getLogger("cri-shim.shim")

READ_CHUNK = 64 * 1024
ATTACH_QUEUE_MAX = 8 << 20          # an attacher that falls this far behind is dropped, never blocks the pod
EXEC_HISTORY = 256                  # finished execs whose exit code is still kept for exec_wait
NS_KINDS = ("ipc", "uts", "network", "pid", "cgroup", "mount", "user")
NS_GET_USERNS = 0xB701              # ioctl on a namespace file: an fd of the user namespace owning it
STATE_CREATING, STATE_CREATED, STATE_STARTING, STATE_RUNNING, STATE_EXITED = (
    "creating", "created", "starting", "running", "exited")

Handler = Callable[[int], None]


# ---------------------------------------------------------------- pod configuration


@dataclass(frozen=True)
class PodConfig:
    sandbox_id: str
    pod_dir: str
    hostname: str
    sandbox_dir: str
    cgroup_parent: str
    network: str = "pod"           # "pod" | "node"
    ipc: str = "pod"
    pid: str = "container"         # "pod" | "container" | "node"
    netns_path: str | None = None
    shm_size: int = 64 << 20
    sysctls: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"
    # [container id, host id, size] ranges: non-empty = the pod gets its own user namespace
    uid_mappings: list[list[int]] = field(default_factory=list)
    gid_mappings: list[list[int]] = field(default_factory=list)

    @staticmethod
    def from_json(d: dict[str, Any]) -> PodConfig:
        return PodConfig(**d)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pod_paths(pod_dir: str) -> dict[str, str]:
    """Every path a pod shim owns, so the backend can clean up after a shim that died."""
    return {
        "sock": os.path.join(pod_dir, "sock"), "pid": os.path.join(pod_dir, "shim.pid"),
        "config": os.path.join(pod_dir, "pod.json"),
        "ipc": os.path.join(pod_dir, "ns", "ipc"), "uts": os.path.join(pod_dir, "ns", "uts"),
        "user": os.path.join(pod_dir, "ns", "user"),
        "shm": os.path.join(pod_dir, "shm"), "containers": os.path.join(pod_dir, "containers"),
    }


def write_json_atomic(path: str, obj: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class ShimError(Exception):
    def __init__(self, kind: str, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field_name

    def reply(self) -> dict[str, Any]:
        return proto.error(self.kind, self.message, self.field)


# ---------------------------------------------------------------- connections


class Conn:
    """One daemon connection: requests in, replies/events/frames out through a bounded queue."""

    def __init__(self, shim: Shim, sock: socket.socket) -> None:
        self.shim = shim
        self.sock = sock
        self.queue: deque[tuple[bytes, list[int]]] = deque()
        self.queued = 0
        self.mode = "request"
        self.attached: Container | None = None
        self.attach_stdin = False
        self.want_stdout = False
        self.want_stderr = False
        self.want_write = False
        self.closed = False
        self.close_after_flush = False
        sock.setblocking(False)
        shim.sel.register(sock, selectors.EVENT_READ, self.on_readable)

    def send(self, obj: dict[str, Any], fds: list[int] | None = None) -> None:
        self.send_raw(proto.encode(obj), fds or [])

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        if self.closed:
            return
        self.queue.append((data, list(fds or [])))
        self.queued += len(data)
        if self.queued > ATTACH_QUEUE_MAX:
            log.warning("dropping a daemon connection that stopped reading")
            self.close()
            return
        self.flush()

    def flush(self) -> None:
        while self.queue and not self.closed:
            data, fds = self.queue[0]
            try:
                proto.send_raw(self.sock, data, fds)
            except BlockingIOError:
                self._watch_writable(True)
                return
            except OSError:
                self.close()
                return
            self.queue.popleft()
            self.queued -= len(data)
            for fd in fds:
                os.close(fd)  # sent: the daemon has its own copies now
        if not self.closed:
            self._watch_writable(False)
            if self.close_after_flush:
                self.close()

    def _watch_writable(self, on: bool) -> None:
        if on != self.want_write:
            self.want_write = on
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
            self.shim.sel.modify(self.sock, mask, self.on_readable)

    def on_readable(self, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self.flush()
        if not events & selectors.EVENT_READ or self.closed:
            return
        try:
            data, fds = proto.recv_raw(self.sock)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        for fd in fds:
            os.close(fd)  # the daemon never sends fds to the shim
        if not data:
            self.close()
            return
        if self.mode == "attach":
            self.shim.on_attach_frame(self, data)
            return
        try:
            msg = proto.decode(data)
            if msg.get("v") != proto.VERSION:
                raise ShimError(proto.FAILURE, f"protocol version {msg.get('v')!r} not supported "
                                f"(shim speaks {proto.VERSION})")
            self.shim.dispatch(self, msg)
        except ShimError as e:
            self.send(e.reply())
        except proto.ProtocolError as e:
            self.send(proto.error(proto.FAILURE, str(e)))
        except Exception as e:  # noqa: BLE001 - a bug answers this request, it must not kill the pod's monitor
            log.exception("request failed")
            self.send(proto.error(proto.FAILURE, f"internal error in the pod shim: {type(e).__name__}: {e}"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _data, fds in self.queue:
            for fd in fds:
                os.close(fd)
        self.queue.clear()
        self.shim.sel.unregister(self.sock)
        self.sock.close()
        self.shim.on_conn_closed(self)


# ---------------------------------------------------------------- containers and execs


@dataclass
class Container:
    id: str
    bundle: str
    spec: dict[str, Any]                                     # config.json as read (init.prepare plans from it)
    view: ShimView
    seccomp: dict[str, Any] | None                           # compiled by the daemon, reused by every exec
    cgroup: cgroups.Cgroup
    log: CriLogWriter
    state_dir: str
    upper: str = ""
    work: str = ""
    tty: bool = False
    stdin_once: bool = False
    stop_signal: int = signal.SIGTERM
    state: str = STATE_CREATING
    pid: int = 0
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    reaped: bool = False
    chan: socket.socket | None = None
    start_w: int = -1
    out_fds: dict[int, str] = field(default_factory=dict)   # fd -> "stdout"/"stderr"
    stdin_w: int = -1
    pty_master: int = -1
    attachers: list[Conn] = field(default_factory=list)
    waiters: list[Conn] = field(default_factory=list)
    pending: Conn | None = None                              # the create/start request being answered
    stdin_writer: PipeWriter | None = None
    engine: Engine | None = None                             # set by op_create

    def status(self) -> dict[str, Any]:
        state = {STATE_CREATING: "created", STATE_STARTING: "created"}.get(self.state, self.state)
        return {"id": self.id, "state": state, "pid": self.pid or None, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at, "exit_code": self.exit_code,
                "reason": self.reason, "message": self.message, "stop_signal": self.stop_signal}

    def record(self) -> dict[str, Any]:
        """What the backend needs to clean up and report this container if the shim dies."""
        return {**self.status(), "bundle": self.bundle, "cgroup": self.cgroup.path, "upper": self.upper,
                "work": self.work, "log_path": self.log.path, **(self.engine.record(self) if self.engine else {})}


@dataclass
class Exec:
    id: str
    container: str
    pid: int
    exit_code: int | None = None
    waiters: list[Conn] = field(default_factory=list)
    chan: socket.socket | None = None
    fds_for_daemon: list[int] = field(default_factory=list)
    pending: Conn | None = None
    reply_fields: dict[str, Any] = field(default_factory=dict)


class PipeWriter:
    """Non-blocking writes to a container's stdin (pipe or pty), buffered so a full pipe never blocks the shim."""

    def __init__(self, shim: Shim, fd: int) -> None:
        self.shim, self.fd = shim, fd
        self.buf = bytearray()
        self.registered = False
        self.close_when_empty = False
        _set_nonblocking(fd)

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        self.buf += data
        if len(self.buf) > ATTACH_QUEUE_MAX:
            del self.buf[: len(self.buf) - ATTACH_QUEUE_MAX]  # keep the newest; a stdin flood is the caller's bug
        self._drain()

    def close(self) -> None:
        self.close_when_empty = True
        self._drain()

    def _drain(self, _events: int = 0) -> None:
        while self.buf and self.fd >= 0:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                if not self.registered:
                    self.shim.sel.register(self.fd, selectors.EVENT_WRITE, self._drain)
                    self.registered = True
                return
            except OSError:
                self.buf.clear()
                break
            del self.buf[:n]
        if self.registered:
            self.shim.sel.unregister(self.fd)
            self.registered = False
        if self.close_when_empty and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- container engines


class Engine(Protocol):
    """What differs between the shim's two ways of running a container, chosen per container by the create
    request's "engine". Stdio, exit recording, attach, logs, cgroup stats and state files stay the shim's."""

    def create(self, c: Container, msg: dict[str, Any], undo: list[Callable[[], None]]) -> bool:
        """Make the container, not started. True: created on return; False: its init reports later."""
        ...

    def start(self, c: Container) -> bool:
        """Let it run. True: running on return; False: answered later (or already, on failure)."""
        ...

    def kill(self, c: Container, sig: int, all_processes: bool) -> None: ...

    def exec(self, conn: Conn, c: Container, process: dict[str, Any], msg: dict[str, Any]) -> None:
        """Start an extra process in the container; answers `conn` now or when the process reports."""
        ...

    def update(self, c: Container, resources: dict[str, Any]) -> None: ...

    def release(self, c: Container) -> None:
        """Once the container's processes are gone: free what the engine holds for it."""
        ...

    def record(self, c: Container) -> dict[str, Any]:
        """What the daemon needs (in state.json) to release the container if the shim dies."""
        ...


class NativeEngine:
    """The shim forks the container's init itself (runtime.linux.init), which reports over a channel."""

    def __init__(self, shim: Shim) -> None:
        self.shim = shim

    def create(self, c: Container, msg: dict[str, Any], undo: list[Callable[[], None]]) -> bool:
        self.shim._fork_init(c, msg, undo)
        return False

    def start(self, c: Container) -> bool:
        try:
            os.write(c.start_w, b"s")
        except OSError:
            pass  # the init died meanwhile: the exit path answers
        os.close(c.start_w)
        c.start_w = -1
        return False

    def kill(self, c: Container, sig: int, all_processes: bool) -> None:
        if all_processes:
            c.cgroup.kill_all(sig)
        if c.state != STATE_EXITED and not c.reaped:
            try:
                os.kill(c.pid, sig)
            except ProcessLookupError:
                pass

    def exec(self, conn: Conn, c: Container, process: dict[str, Any], msg: dict[str, Any]) -> None:
        self.shim._native_exec(conn, c, process, msg)

    def update(self, c: Container, resources: dict[str, Any]) -> None:
        try:
            c.cgroup.apply(resources)
        except cgroups.CgroupError as e:
            raise ShimError(proto.UNSUPPORTED, e.message, e.field) from None

    def release(self, c: Container) -> None:
        pass   # the init's mounts died with its mount namespace

    def record(self, c: Container) -> dict[str, Any]:
        return {"engine": shim_runc.ENGINE_NATIVE}


class RuncEngine:
    """An installed runc with the container's bundle (runtime.linux.shim_runc); blocking calls, each bounded."""

    def __init__(self, shim: Shim, driver: shim_runc.RuncDriver) -> None:
        self.shim = shim
        self.driver = driver

    def create(self, c: Container, msg: dict[str, Any], undo: list[Callable[[], None]]) -> bool:
        """`runc create` with the shim's pipes as the container's stdio: runc returns once the container is
        set up, its init then waits for `runc start`."""
        shim = self.shim
        if shim.pod_ns.get("user"):
            raise ShimError(proto.UNSUPPORTED, "user namespaces are not supported with the runc handler",
                            "linux.uid_mappings")
        request = shim_runc.CreateRequest(
            root_path=c.view.root_path, layers=tuple(str(x) for x in msg.get("layers") or []), upper=c.upper,
            work=c.work, readonly=bool(msg.get("readonly")), cgroups_path=c.cgroup.path, terminal=c.tty)
        pod = shim_runc.PodMounts(sandbox_dir=shim.config.sandbox_dir,
                                  shm=shim.paths["shm"] if shim.config.ipc == "pod" else "",
                                  ipc_pin=shim.pod_ns.get("ipc", ""))
        parent_ends: dict[str, Any]
        if c.tty:   # runc makes the terminal; its stdio are unused
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            stdio, parent_ends = cinit.Stdio(stdin=null, stdout=null, stderr=null), {"out": {}, "stdin": -1}
        else:
            stdio, parent_ends = shim._container_stdio(c, bool(msg.get("stdin")))
        try:
            c.pid, pty = self.driver.create(c.id, c.spec, request, pod, c.state_dir,
                                            (stdio.stdin, stdio.stdout, stdio.stderr), undo)
        except RuntimeFailure as e:
            _close_fds([*parent_ends["out"], *([parent_ends["stdin"]] if parent_ends["stdin"] >= 0 else [])])
            raise ShimError(proto.FAILURE, e.message) from None
        finally:
            _close_fds({fd for fd in (stdio.stdin, stdio.stdout, stdio.stderr) if fd >= 0})
        undo.clear()   # from here on _destroy_container cleans up (release)
        shim._hold_stdio(c, parent_ends)
        if pty >= 0:
            c.pty_master = pty
            shim._adopt_pty(c)
        return True

    def start(self, c: Container) -> bool:
        try:
            self.driver.start(c.id)
        except RuntimeFailure as e:
            self.shim._init_failed(c, proto.FAILURE, e.message, None)
            return False
        return True

    def kill(self, c: Container, sig: int, all_processes: bool) -> None:
        if not c.reaped:
            self.driver.kill(c.id, sig, all_processes)

    def exec(self, conn: Conn, c: Container, process: dict[str, Any], msg: dict[str, Any]) -> None:
        """`runc exec --detach`: the process is re-parented to the shim when runc exits and reaped like a
        native exec; its stdio are the same pipes (or runc's terminal)."""
        shim = self.shim
        theirs: list[int]
        if msg.get("tty"):
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            stdio, mine, theirs = cinit.Stdio(stdin=null, stdout=null, stderr=null), [null], []
        else:
            stdio, mine, theirs = _exec_stdio(msg)
        shim.exec_seq += 1
        try:
            pid, pty = self.driver.exec(c.id, process, c.state_dir, shim.exec_seq,
                                        (stdio.stdin, stdio.stdout, stdio.stderr))
        except RuntimeFailure as err:
            _close_fds(theirs)
            raise ShimError(proto.FAILURE, err.message) from None
        finally:
            _close_fds(mine)
        started = Exec(id=f"{c.id[:12]}-{shim.exec_seq}", container=c.id, pid=pid)
        shim.execs[started.id] = started
        if pty >= 0:
            conn.send(proto.ok(exec_id=started.id, pid=pid, tty=True), [pty])
        else:
            conn.send(proto.ok(exec_id=started.id, pid=pid), theirs)

    def update(self, c: Container, resources: dict[str, Any]) -> None:
        try:
            self.driver.update(c.id, resources)
        except RuntimeFailure as e:
            raise ShimError(proto.FAILURE, e.message, "resources") from None

    def release(self, c: Container) -> None:
        self.driver.delete(c.id)
        shim_runc.unmount_rootfs(c.view.root_path)

    def record(self, c: Container) -> dict[str, Any]:
        return {"engine": shim_runc.ENGINE_RUNC, "runc_path": self.driver.runc.binary,
                "runc_root": self.driver.root, "rootfs_mount": c.view.root_path}


# ---------------------------------------------------------------- the shim


@dataclass(frozen=True)
class HostFacts:
    """What every shim on the host needs, found out once by the zygote before it forks (see warm_up): a shim
    that worked them out itself would unshare ~0.2 MiB more of the zygote's pages. A cgroup hierarchy
    mounted later is seen from the next zygote on (a daemon that stops cleanly stops its zygote)."""

    hierarchy: cgroups.Hierarchy
    cgroup_mounts: tuple[mounts.HostCgroupMount, ...]    # for the containers' /sys/fs/cgroup
    fork_into_cgroup: bool                                # clone3(CLONE_INTO_CGROUP) works here


class Shim:
    def __init__(self, config: PodConfig, host: HostFacts) -> None:
        self.config = config
        self.paths = pod_paths(config.pod_dir)
        self.sel = selectors.DefaultSelector()
        self.host = host
        self.containers: dict[str, Container] = {}
        self.execs: dict[str, Exec] = {}
        self.finished_execs: deque[str] = deque()
        self.exec_seq = 0
        self.event_conns: list[Conn] = []
        self.host_ns: dict[str, int] = {}
        self.pod_ns: dict[str, str] = {}
        self.pod_init_pid = 0
        self.stopped = False
        self.running = True
        self.listener: socket.socket | None = None
        self.wakeup_r = -1
        self.engines: dict[str, Engine] = {shim_runc.ENGINE_NATIVE: NativeEngine(self)}   # runc ones by binary

    # ------------------------------------------------------------ startup

    def setup(self) -> dict[str, Any]:
        """Namespaces, /dev/shm, socket. On failure everything made so far is undone and the error raised."""
        cfg = self.config
        os.makedirs(self.paths["containers"], mode=0o700, exist_ok=True)
        for kind in NS_KINDS:
            self.host_ns[kind] = os.open(f"/proc/self/ns/{sc.NAMESPACE_PROC_NAMES[kind]}",
                                         os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._enter_monitor_cgroup()
            self._check_sysctls()
            if cfg.network == "pod":
                if not cfg.netns_path:
                    raise ShimError(proto.INVALID_SPEC, "a pod network needs the pinned netns path", "netns_path")
                self._check_netns(cfg.netns_path)
                self.pod_ns["network"] = cfg.netns_path
                self._apply_sysctls("network", cfg.netns_path)
            if cfg.uid_mappings:
                self._pin_userns()
            if cfg.ipc == "pod":
                self._pin_new("ipc", sc.CLONE_NEWIPC, None)
                self._mount_pod_shm()
            if cfg.network == "pod":
                self._pin_new("uts", sc.CLONE_NEWUTS, cfg.hostname)
            if cfg.pid == "pod":
                self._start_pod_init()
            self._listen()
        except BaseException:
            self.teardown()
            raise
        return {"pid": os.getpid(), "namespaces": self.namespaces()}

    def namespaces(self) -> dict[str, str]:
        out = {"net" if k == "network" else k: v for k, v in self.pod_ns.items()}
        if self.pod_init_pid:
            out["pid"] = f"/proc/{self.pod_init_pid}/ns/pid"
        return out

    def _enter_monitor_cgroup(self) -> None:
        cg = self.host.hierarchy.cgroup(cgroups.cgroup_path("cgroupfs", self.config.cgroup_parent, "monitor"))
        try:
            cg.create()
            cg.add_process(os.getpid())
        except (OSError, cgroups.CgroupError) as e:
            raise ShimError(proto.INVALID_SPEC, f"cannot place the pod shim in {cg.path}: {e}",
                            "linux.cgroup_parent") from None

    def _check_sysctls(self) -> None:
        for key, value in self.config.sysctls.items():
            try:
                check_sysctl(key, value, f"sysctls[{key}]")
            except SpecError as e:
                raise ShimError(proto.INVALID_SPEC, e.message, e.field) from None
            if key.startswith("net.") and self.config.network != "pod":
                raise ShimError(proto.INVALID_SPEC, f"{key} would change the host's network namespace "
                                "(the pod uses the host network)", f"sysctls[{key}]")
            if not key.startswith("net.") and self.config.ipc != "pod":
                raise ShimError(proto.INVALID_SPEC, f"{key} would change the host's IPC namespace "
                                "(the pod uses the host IPC)", f"sysctls[{key}]")

    def _apply_sysctls(self, kind: str, ns_path: str) -> None:
        """Write the pod's sysctls of one namespace kind from inside that namespace."""
        wanted = {k: v for k, v in self.config.sysctls.items() if k.startswith("net.") == (kind == "network")}
        if not wanted:
            return
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.NAMESPACE_FLAGS[kind])
        finally:
            os.close(fd)
        try:
            for key, value in wanted.items():
                try:
                    with open(sysctl_path(key), "w") as f:
                        f.write(value)
                except OSError as e:
                    raise ShimError(proto.INVALID_SPEC, f"cannot set {key}={value}: {e.strerror}",
                                    f"sysctls[{key}]") from None
        finally:
            sc.setns(self.host_ns[kind], sc.NAMESPACE_FLAGS[kind])

    def _check_netns(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ShimError(proto.INVALID_SPEC, f"cannot open the pod netns {path}: {e.strerror}",
                            "netns_path") from None
        try:
            if fcntl.ioctl(fd, 0xB703) != sc.CLONE_NEWNET:
                raise ShimError(proto.INVALID_SPEC, f"{path} is not a network namespace", "netns_path")
        except OSError:
            raise ShimError(proto.INVALID_SPEC, f"{path} is not a namespace file", "netns_path") from None
        finally:
            os.close(fd)

    def _pin_new(self, kind: str, flag: int, hostname: str | None) -> None:
        """A new namespace, kept alive by a bind mount of its nsfs file; the shim then steps back out."""
        pin = self.paths["ipc" if kind == "ipc" else "uts"]
        os.makedirs(os.path.dirname(pin), mode=0o700, exist_ok=True)
        os.close(os.open(pin, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o400))
        sc.unshare(flag)
        try:
            if hostname:
                socket.sethostname(hostname)
            sc.mount(f"/proc/self/ns/{kind}", pin, None, sc.MS_BIND)
            self.pod_ns[kind] = pin
            if kind == "ipc":
                self._apply_sysctls_here(lambda k: not k.startswith("net."))
        finally:
            sc.setns(self.host_ns[kind], flag)

    def _pin_userns(self) -> None:
        """The pod's user namespace, pinned like the others; containers join it last (runtime.linux.init).

        The daemon makes a userns pod's netns inside a new user namespace (runtime.linux.userns_netns):
        that one is the pod's, found from the netns. Otherwise (no pod netns) the shim makes one."""
        pin = self.paths["user"]
        os.makedirs(os.path.dirname(pin), mode=0o700, exist_ok=True)
        os.close(os.open(pin, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o400))
        owner = self._netns_owner()
        if owner >= 0:
            try:
                self._check_maps(owner)
                sc.mount(f"/proc/self/fd/{owner}", pin, None, sc.MS_BIND)
            finally:
                os.close(owner)
            self.pod_ns["user"] = pin
            return
        self._make_userns(pin)

    def _check_maps(self, userns_fd: int) -> None:
        """The netns' user namespace must map exactly the pod's ranges (the containers' OCI mappings, used
        for the idmapped layers and the upper dir's owner, are these). A child enters it and reads its own
        maps, which show the ranges relative to the host."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                sc.setns(userns_fd, sc.CLONE_NEWUSER)
                with open("/proc/self/uid_map") as u, open("/proc/self/gid_map") as g:
                    os.write(w, json.dumps([u.read(), g.read()]).encode())
            finally:
                os._exit(0)
        os.close(w)
        try:
            with os.fdopen(r, "rb") as f:
                data = f.read()
        finally:
            os.waitpid(pid, 0)
        want = [[list(m) for m in self.config.uid_mappings], [list(m) for m in self.config.gid_mappings]]
        try:
            got = [[[int(x) for x in line.split()] for line in text.splitlines()] for text in json.loads(data)]
        except ValueError:
            got = []
        if got != want:
            raise ShimError(proto.INVALID_SPEC, f"the pod netns' user namespace maps {got or 'nothing readable'}, "
                            f"not the pod's {want}", "linux.uid_mappings")

    def _netns_owner(self) -> int:
        """fd of the user namespace owning the pod's netns, if that is not the host's; else -1."""
        path = self.config.netns_path
        if self.config.network != "pod" or not path:
            return -1
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            owner = int(fcntl.ioctl(fd, NS_GET_USERNS))
        finally:
            os.close(fd)
        if _same_file(owner, self.host_ns["user"]):
            os.close(owner)
            return -1
        return owner

    def _make_userns(self, pin: str) -> None:
        """A process cannot step back out of a user namespace it entered, so a short-lived child makes it:
        the child unshares, the shim writes its uid_map/gid_map (as host root, so setgroups stays
        allowed), bind-mounts /proc/<child>/ns/user onto the pin and lets the child go."""
        maps = {name: "".join(f"{inside} {outside} {size}\n" for inside, outside, size in ranges)
                for name, ranges in (("uid_map", self.config.uid_mappings), ("gid_map", self.config.gid_mappings))}
        try:
            with sc.unshared_child(sc.CLONE_NEWUSER, maps) as pid:
                sc.mount(f"/proc/{pid}/ns/user", pin, None, sc.MS_BIND)
        except sc.IdMapRefused as e:
            raise ShimError(proto.INVALID_SPEC, str(e), f"linux.{e.map_name[:3]}_mappings") from None
        except OSError as e:
            raise ShimError(proto.FAILURE, f"cannot create the pod's user namespace: {e}",
                            "linux.uid_mappings") from None
        self.pod_ns["user"] = pin

    def root_ids(self) -> tuple[int, int]:
        """Host uid/gid of the pod's root (0, 0 without a user namespace)."""
        def host(ranges: list[list[int]]) -> int:
            return next((o for i, o, _ in ranges if i == 0), 0)
        return host(self.config.uid_mappings), host(self.config.gid_mappings)

    def _apply_sysctls_here(self, select: Callable[[str], bool]) -> None:
        for key, value in self.config.sysctls.items():
            if select(key):
                try:
                    with open(sysctl_path(key), "w") as f:
                        f.write(value)
                except OSError as e:
                    raise ShimError(proto.INVALID_SPEC, f"cannot set {key}={value}: {e.strerror}",
                                    f"sysctls[{key}]") from None

    def _mount_pod_shm(self) -> None:
        shm = self.paths["shm"]
        os.makedirs(shm, mode=0o700, exist_ok=True)
        size = self.config.shm_size
        if size <= 0:
            raise ShimError(proto.INVALID_SPEC, f"{size} is not a valid /dev/shm size", "shm_size")
        uid, gid = self.root_ids()   # owned by the pod's root, also in a user namespace
        sc.mount("shm", shm, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                 f"mode=1777,size={size},uid={uid},gid={gid}")

    def _start_pod_init(self) -> None:
        """PID 1 of the pod's shared PID namespace: reaps whatever the pod's containers orphan."""
        self.pod_init_pid = self._fork_in_pid_ns("", None, None, lambda _procs: _pod_init_main())

    def _listen(self) -> None:
        path = self.paths["sock"]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = proto.new_socket()
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self.listener = sock
        with open(self.paths["pid"], "w") as f:
            f.write(str(os.getpid()))

    def teardown(self) -> None:
        """Undo the pod-level state (also run by the backend for a shim that died; see backend.cleanup_pod)."""
        if self.pod_init_pid:
            _kill_pod_init_and_reap(self.pod_init_pid)
            self.pod_init_pid = 0
        cleanup_pod_mounts(self.config.pod_dir)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for key in ("sock", "pid"):
            try:
                os.unlink(self.paths[key])
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ main loop

    def run(self) -> NoReturn:
        r, w = os.pipe()
        _set_nonblocking(r)
        _set_nonblocking(w)
        self.wakeup_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # The daemon's session may be signalled as a whole; the pod's monitor must not go with it.
            signal.signal(sig, signal.SIG_IGN)
        self.sel.register(r, selectors.EVENT_READ, self._on_signal)
        assert self.listener is not None
        self.sel.register(self.listener, selectors.EVENT_READ, self._on_accept)
        self._reap()
        while self.running:
            for key, events in self.sel.select():
                callback: Handler = key.data
                try:
                    callback(events)
                except Exception:  # noqa: BLE001 - a bug in one handler must not take the pod's monitor down
                    log.exception("event handler failed")
        self.teardown()
        os._exit(0)

    def _on_signal(self, _events: int) -> None:
        try:
            while os.read(self.wakeup_r, 512):
                pass
        except BlockingIOError:
            pass
        self._reap()

    def _on_accept(self, _events: int) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        Conn(self, sock)

    def on_conn_closed(self, conn: Conn) -> None:
        if conn in self.event_conns:
            self.event_conns.remove(conn)
        for c in self.containers.values():
            if conn in c.waiters:
                c.waiters.remove(conn)
            if conn in c.attachers:
                c.attachers.remove(conn)
                if conn.attach_stdin and c.stdin_once:
                    self._close_stdin(c)
        for e in self.execs.values():
            if conn in e.waiters:
                e.waiters.remove(conn)

    # ------------------------------------------------------------ requests

    def dispatch(self, conn: Conn, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if handler is None:
            raise ShimError(proto.FAILURE, f"unknown operation {op!r}")
        handler(conn, msg)

    def _container(self, msg: dict[str, Any]) -> Container:
        cid = msg.get("id")
        c = self.containers.get(cid) if isinstance(cid, str) else None
        if c is None:
            raise ShimError(proto.NOT_FOUND, f"container {cid} not found in pod {self.config.sandbox_id}")
        return c

    def op_status(self, conn: Conn, _msg: dict[str, Any]) -> None:
        conn.send(proto.ok(pid=os.getpid(), version=proto.VERSION, ready=not self.stopped,
                           namespaces=self.namespaces(),
                           containers=[c.status() for c in self.containers.values()
                                       if c.state != STATE_CREATING]))

    def op_events(self, conn: Conn, _msg: dict[str, Any]) -> None:
        conn.mode = "events"
        self.event_conns.append(conn)
        conn.send(proto.ok(pid=os.getpid()))

    def op_container_status(self, conn: Conn, msg: dict[str, Any]) -> None:
        conn.send(proto.ok(status=self._container(msg).status()))

    def op_wait(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        if c.state == STATE_EXITED:
            conn.send(proto.ok(status=c.status()))
        else:
            c.waiters.append(conn)

    def op_stop_pod(self, conn: Conn, _msg: dict[str, Any]) -> None:
        self.stopped = True
        if self.pod_init_pid:
            # Not waited for here: a dying namespace init waits until every other process of the namespace is
            # reaped, and some (a container init being created, an exec) are the shim's own children, which only
            # this loop reaps. _reap collects the init (and clears pod_init_pid) like any other child.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pod_init_pid, signal.SIGKILL)
        conn.send(proto.ok())

    def op_shutdown(self, conn: Conn, _msg: dict[str, Any]) -> None:
        for c in list(self.containers.values()):
            self._destroy_container(c)
        conn.send(proto.ok())
        conn.close_after_flush = True
        conn.flush()
        self.running = False

    # ------------------------------------------------------------ create / start

    def op_create(self, conn: Conn, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        if not isinstance(cid, str) or not cid or not all(ch.isalnum() or ch in "-_." for ch in cid) \
                or len(cid) > 128:
            raise ShimError(proto.INVALID_SPEC, f"{cid!r} is not a valid container id", "id")
        if cid in self.containers:
            raise ShimError(proto.WRONG_STATE, f"container {cid} already exists in this pod")
        if self.stopped:
            raise ShimError(proto.WRONG_STATE, "the pod sandbox is stopped")
        bundle = str(msg.get("bundle", ""))
        try:
            spec = read_spec(bundle)
            view = shim_view(spec, bundle)
        except SpecError as e:
            raise ShimError(proto.UNSUPPORTED if e.unsupported else proto.INVALID_SPEC, e.message, e.field) \
                from None
        engine = self._engine(msg)
        undo: list[Callable[[], None]] = []
        try:
            c = self._prepare_container(cid, bundle, spec, view, msg, undo)
            c.engine = engine
            created = engine.create(c, msg, undo)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:  # noqa: BLE001 - keep undoing
                    log.exception("undo after a failed create of %s", cid)
            raise
        c.pending = conn
        self.containers[cid] = c
        if created:
            self._created(c)

    def _engine(self, msg: dict[str, Any]) -> Engine:
        name = msg.get("engine") or shim_runc.ENGINE_NATIVE
        if name == shim_runc.ENGINE_NATIVE:
            return self.engines[name]
        if name != shim_runc.ENGINE_RUNC:
            raise ShimError(proto.INVALID_SPEC, f"unknown container engine {name!r}", "engine")
        binary = str(msg.get("runc_path") or "")
        engine = self.engines.get(f"runc:{binary}")
        if engine is None:
            try:
                driver = shim_runc.RuncDriver(binary, os.path.join(self.config.pod_dir, "runc"))
            except RuntimeFailure as e:
                raise ShimError(proto.UNSUPPORTED, e.message, "runc_path") from None
            engine = self.engines[f"runc:{binary}"] = RuncEngine(self, driver)
        return engine

    def _prepare_container(self, cid: str, bundle: str, spec: dict[str, Any], plan: ShimView,
                           msg: dict[str, Any], undo: list[Callable[[], None]]) -> Container:
        cg_path = plan.cgroups_path or cgroups.cgroup_path("cgroupfs", self.config.cgroup_parent, cid)
        if not cg_path.startswith("/"):
            raise ShimError(proto.INVALID_SPEC, f"{cg_path!r} must be an absolute cgroupfs path",
                            "linux.cgroupsPath")
        try:
            cg = self.host.hierarchy.cgroup(cg_path)
            if cg.exists():
                raise ShimError(proto.WRONG_STATE, f"cgroup {cg_path} already exists", "linux.cgroupsPath")
            cg.create()
            undo.append(cg.destroy)
            cg.apply(plan.resources)
        except cgroups.CgroupError as e:
            raise ShimError(proto.UNSUPPORTED, e.message, e.field) from None
        except OSError as e:
            raise ShimError(proto.FAILURE, f"cannot create cgroup {cg_path}: {e.strerror}",
                            "linux.cgroupsPath") from None
        state_dir = os.path.join(self.paths["containers"], cid)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        undo.append(lambda: shutil.rmtree(state_dir, ignore_errors=True))
        log_path = msg.get("log_path") or None
        writer = CriLogWriter(log_path)
        try:
            writer.open()
        except OSError as e:
            raise ShimError(proto.INVALID_SPEC, f"cannot open the log file {log_path}: {e.strerror}",
                            "log_path") from None
        undo.append(writer.close_file)
        c = Container(id=cid, bundle=bundle, spec=spec, view=plan, seccomp=msg.get("seccomp"), cgroup=cg, log=writer, state_dir=state_dir,
                      tty=bool(msg.get("tty")) or plan.terminal, stdin_once=bool(msg.get("stdin_once")),
                      stop_signal=int(msg.get("stop_signal") or signal.SIGTERM))
        layers = [str(x) for x in msg.get("layers") or []]
        scratch = str(msg.get("scratch") or "")
        if layers:
            if not scratch or not os.path.isabs(scratch):
                raise ShimError(proto.INVALID_SPEC, "an absolute scratch directory is needed for the overlay",
                                "rootfs.scratch")
            c.upper, c.work = os.path.join(scratch, "upper"), os.path.join(scratch, "work")
            for d in (c.upper, c.work):
                os.makedirs(d, mode=0o755, exist_ok=True)
            undo.append(lambda: _remove_dirs(c.upper, c.work))
            os.makedirs(plan.root_path, mode=0o755, exist_ok=True)
        elif not os.path.isdir(plan.root_path):
            raise ShimError(proto.INVALID_SPEC, f"{plan.root_path} is not a directory (and no layers were given)",
                            "root.path")
        return c

    def _fork_init(self, c: Container, msg: dict[str, Any], undo: list[Callable[[], None]]) -> None:
        parent_chan, child_chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        start_r, start_w = os.pipe()
        stdio, parent_ends = self._container_stdio(c, bool(msg.get("stdin")))
        ctx = cinit.InitContext(
            spec=c.spec, bundle=c.bundle, chan=child_chan, stdio=stdio, readonly=bool(msg.get("readonly")),
            seccomp=c.seccomp, sandbox_dir=self.config.sandbox_dir,
            pod_shm=self.paths["shm"] if self.config.ipc == "pod" else "",
            pod_ipc=self.pod_ns.get("ipc", ""),
            layers=tuple(str(x) for x in msg.get("layers") or []), upper=c.upper, work=c.work, start_fd=start_r,
            cgroup_mounts=self._cgroup_mounts(c.cgroup))
        prep_fds: list[int] = []
        try:
            prep = _planned(lambda: cinit.prepare(ctx))
            prep_fds = prep.fds()
            pid = self._fork_in_pid_ns(c.view.pid_namespace, None, c.cgroup,
                                       lambda procs: cinit.container_init(ctx, prep, procs))
        except BaseException:
            parent_chan.close()
            _close_fds([start_w, *parent_ends["out"], *([parent_ends["stdin"]] if parent_ends["stdin"] >= 0 else [])])
            raise
        finally:
            _close_fds(fd for fd in (start_r, stdio.stdin, stdio.stdout, stdio.stderr, *prep_fds) if fd >= 0)
            child_chan.close()
        undo.clear()  # from here on the child's exit path cleans up (see _init_failed)
        c.pid, c.start_w, c.chan = pid, start_w, parent_chan
        self._hold_stdio(c, parent_ends)
        parent_chan.setblocking(False)
        self.sel.register(parent_chan, selectors.EVENT_READ, lambda ev: self._on_init_chan(c))

    def _hold_stdio(self, c: Container, parent_ends: dict[str, Any]) -> None:
        """The shim's ends of a new container's stdio: output to the log and attachers, stdin from attach."""
        c.created_at = time.time_ns()
        c.out_fds = parent_ends["out"]
        c.stdin_w = parent_ends["stdin"]
        for fd, stream in c.out_fds.items():
            _set_nonblocking(fd)
            self.sel.register(fd, selectors.EVENT_READ, self._output_reader(c, fd, stream))
        if c.stdin_w >= 0:
            c.stdin_writer = PipeWriter(self, c.stdin_w)

    def _cgroup_mounts(self, cg: cgroups.Cgroup) -> tuple[mounts.HostCgroupMount, ...]:
        dirs = cg.dirs()
        return tuple(dataclasses.replace(h, container_dir=dirs.get(h.name, "")) for h in self.host.cgroup_mounts)

    def _fork_in_pid_ns(self, pid_ns: str | None, pid_ns_fd: int | None, cgroup: cgroups.Cgroup | None,
                        child: Callable[[tuple[str, ...]], object]) -> int:
        """fork() with the child in the requested PID namespace: "" = a new one, a path = join it,
        None = the host's. setns/unshare of PID namespaces only affect children, so the shim moves its
        pid_for_children there, forks, and moves back. The child gets the cgroup files it still has to
        write itself to enter `cgroup` (see fork_into)."""
        moved = False
        if pid_ns_fd is not None:
            sc.setns(pid_ns_fd, sc.CLONE_NEWPID)
            moved = True
        elif pid_ns == "":
            sc.unshare(sc.CLONE_NEWPID)
            moved = True
        elif pid_ns:
            fd = os.open(pid_ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, sc.CLONE_NEWPID)
                moved = True
            finally:
                os.close(fd)
        try:
            pid, procs = fork_into(cgroup, self.host.fork_into_cgroup)
            if pid == 0:
                child(procs)    # never returns: the child execs or _exits
                os._exit(127)
        finally:
            if moved:           # only the parent gets here
                sc.setns(self.host_ns["pid"], sc.CLONE_NEWPID)
        return pid

    def _container_stdio(self, c: Container, want_stdin: bool) -> tuple[cinit.Stdio, dict[str, Any]]:
        if c.tty:
            return cinit.Stdio(tty=True), {"out": {}, "stdin": -1}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if want_stdin:
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        return (cinit.Stdio(stdin=in_r, stdout=out_w, stderr=err_w),
                {"out": {out_r: "stdout", err_r: "stderr"}, "stdin": in_w})

    def _on_init_chan(self, c: Container) -> None:
        assert c.chan is not None
        got = _read_child_chan(c.chan)
        if got is None:
            return
        msg, fds = got
        if msg is not None:
            if msg.get("pty") and fds:
                c.pty_master = fds.pop(0)
                self._adopt_pty(c)
            for fd in fds:
                os.close(fd)
            if msg.get("ready"):
                self._created(c)
            elif "error" in msg:
                err = msg["error"]
                self._init_failed(c, err.get("kind", proto.FAILURE), err.get("message", "?"), err.get("field"))
            return
        # EOF: execve succeeded (the channel was close-on-exec), or the child died.
        self.sel.unregister(c.chan)
        c.chan.close()
        c.chan = None
        if c.state == STATE_STARTING:
            self._started(c)
        elif c.state == STATE_CREATING:
            self._init_failed(c, proto.FAILURE, "the container init died during setup", None)
        elif c.pending is not None:
            # It exec'd and already exited (the exit was reaped before this EOF was read).
            c.pending.send(proto.ok(status=c.status()))
            c.pending = None

    def _adopt_pty(self, c: Container) -> None:
        _set_nonblocking(c.pty_master)
        c.out_fds[c.pty_master] = "stdout"
        self.sel.register(c.pty_master, selectors.EVENT_READ, self._output_reader(c, c.pty_master, "stdout"))
        # Writes go through a second descriptor so reading and writing register separately.
        c.stdin_w = os.dup(c.pty_master)
        c.stdin_writer = PipeWriter(self, c.stdin_w)

    def _created(self, c: Container) -> None:
        c.state = STATE_CREATED
        self._save(c)
        if c.pending is not None:
            c.pending.send(proto.ok(status=c.status()))
            c.pending = None

    def _init_failed(self, c: Container, kind: str, message: str, field_name: str | None) -> None:
        """Setup or exec failed: answer the request and undo everything (the container never ran)."""
        pending, c.pending = c.pending, None
        was_starting = c.state == STATE_STARTING
        if not c.reaped:  # never signal a pid we already reaped: it may belong to someone else now
            _kill_and_reap(c.pid)
            c.reaped = True
        if was_starting:
            c.state = STATE_EXITED
            c.exit_code, c.reason, c.message = 128, REASON_START_ERROR, message
            c.finished_at = time.time_ns()
            self._close_io(c)
            self._write_exit(c)
            self._notify_exit(c)
        else:
            self._destroy_container(c)
        if pending is not None:
            pending.send(proto.error(kind, message, field_name))

    def op_start(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        if c.state != STATE_CREATED:
            raise ShimError(proto.WRONG_STATE, f"container {c.id} is {c.status()['state']}, not created")
        c.state = STATE_STARTING
        c.pending = conn
        assert c.engine is not None
        if c.engine.start(c):
            self._started(c)

    def _started(self, c: Container) -> None:
        if not c.started_at:
            c.started_at = time.time_ns()
        if c.state == STATE_STARTING:
            c.state = STATE_RUNNING
        self._save(c)
        if c.pending is not None:
            c.pending.send(proto.ok(status=c.status()))
            c.pending = None

    # ------------------------------------------------------------ output, attach

    def _output_reader(self, c: Container, fd: int, stream: str) -> Handler:
        def on_ready(_events: int) -> None:
            self._read_output(c, fd, stream)
        return on_ready

    def _read_output(self, c: Container, fd: int, stream: str) -> bool:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""  # EIO on a pty master: every slave end is closed
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            del c.out_fds[fd]
            c.log.end(stream)
            if fd == c.pty_master:
                c.pty_master = -1
            return False
        c.log.feed(stream, data)
        channel = proto.STDOUT if stream == "stdout" else proto.STDERR
        for a in list(c.attachers):
            if a.want_stdout if stream == "stdout" else a.want_stderr:
                a.send_raw(proto.frame(channel, data))
        return True

    def _drain_output(self, c: Container) -> None:
        for fd, stream in list(c.out_fds.items()):
            for _ in range(64):
                if fd not in c.out_fds or not self._read_output(c, fd, stream):
                    break

    def op_attach(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        if c.state == STATE_EXITED:
            raise ShimError(proto.WRONG_STATE, f"container {c.id} is not running")
        want_stdin = bool(msg.get("stdin"))
        if want_stdin and c.stdin_writer is None:
            raise ShimError(proto.INVALID_SPEC, f"container {c.id} was not created with stdin", "stdin")
        conn.mode = "attach"
        conn.attached = c
        conn.attach_stdin = want_stdin
        conn.want_stdout = bool(msg.get("stdout"))
        conn.want_stderr = bool(msg.get("stderr")) and not c.tty
        c.attachers.append(conn)
        conn.send(proto.ok(tty=c.tty))

    def on_attach_frame(self, conn: Conn, data: bytes) -> None:
        c = conn.attached
        if c is None or not data:
            return
        channel, payload = data[0], data[1:]
        if channel == proto.STDIN and conn.attach_stdin and c.stdin_writer is not None:
            c.stdin_writer.write(payload)
        elif channel == proto.CLOSE_STDIN and conn.attach_stdin:
            if c.stdin_once:
                self._close_stdin(c)
            conn.attach_stdin = False
        elif channel == proto.CONTROL:
            try:
                ctl = proto.decode(payload)
            except proto.ProtocolError:
                return
            if "resize" in ctl and c.pty_master >= 0:
                width, height = (int(x) for x in ctl["resize"])
                _resize(c.pty_master, width, height)

    def _close_stdin(self, c: Container) -> None:
        if c.stdin_writer is not None:
            c.stdin_writer.close()
            c.stdin_writer = None
            c.stdin_w = -1

    def op_resize(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        if c.pty_master < 0:
            raise ShimError(proto.INVALID_SPEC, f"container {c.id} has no terminal", "tty")
        _resize(c.pty_master, int(msg.get("width", 0)), int(msg.get("height", 0)))
        conn.send(proto.ok())

    def op_reopen_log(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        try:
            c.log.reopen()
        except OSError as e:
            raise ShimError(proto.FAILURE, f"cannot reopen {c.log.path}: {e.strerror}", "log_path") from None
        conn.send(proto.ok())

    # ------------------------------------------------------------ signals, exits

    def op_kill(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        sig = int(msg.get("signal", signal.SIGKILL))
        if not 0 < sig < signal.NSIG:
            raise ShimError(proto.INVALID_SPEC, f"{sig} is not a signal", "signal")
        assert c.engine is not None
        c.engine.kill(c, sig, bool(msg.get("all")))
        conn.send(proto.ok())

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_child_exit(pid, os.waitstatus_to_exitcode(status))

    def _on_child_exit(self, pid: int, code: int) -> None:
        if pid == self.pod_init_pid:
            self.pod_init_pid = 0
            return
        for c in self.containers.values():
            if c.pid == pid and not c.reaped:
                c.reaped = True
                if c.state in (STATE_RUNNING, STATE_STARTING, STATE_CREATED):
                    self._container_exited(c, code)
                return
        for e in self.execs.values():
            if e.pid == pid and e.exit_code is None:
                self._exec_exited(e, code)
                return
        # Anything else is an orphan we adopted as subreaper: reaping it is all there is to do.

    def _container_exited(self, c: Container, code: int) -> None:
        # OOM counter first: it must be read before anything tears the cgroup down.
        oom = c.cgroup.oom_kill_count() > 0
        c.finished_at = time.time_ns()
        c.exit_code = 128 - code if code < 0 else code
        c.reason = "OOMKilled" if oom else ("Completed" if c.exit_code == 0 else "Error")
        if c.state == STATE_CREATED:
            c.message = "the container init exited before it was started"
        if not c.started_at and c.state == STATE_STARTING:
            c.started_at = c.finished_at
        c.state = STATE_EXITED
        self._write_exit(c)
        self._save(c)
        self._drain_output(c)
        if c.pending is not None and c.chan is None:
            c.pending.send(proto.ok(status=c.status()))
            c.pending = None
        self._notify_exit(c)

    def _notify_exit(self, c: Container) -> None:
        event = {"event": "exited", "id": c.id, "status": c.status()}
        for conn in list(self.event_conns):
            conn.send(event)
        for conn in c.waiters:
            conn.send(proto.ok(status=c.status()))
        c.waiters.clear()
        for conn in list(c.attachers):
            conn.send_raw(proto.frame(proto.CONTROL, proto.encode({"exit": c.exit_code})))
            conn.close_after_flush = True
            conn.flush()

    def _write_exit(self, c: Container) -> None:
        try:
            write_json_atomic(os.path.join(c.state_dir, "exit.json"),
                              {"exit_code": c.exit_code, "finished_at": c.finished_at, "reason": c.reason,
                               "message": c.message, "started_at": c.started_at})
        except OSError:
            log.exception("cannot record the exit of %s", c.id)

    def _save(self, c: Container) -> None:
        try:
            write_json_atomic(os.path.join(c.state_dir, "state.json"), c.record())
        except OSError:
            log.exception("cannot save the state of %s", c.id)

    # ------------------------------------------------------------ delete, update, stats

    def op_delete(self, conn: Conn, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        c = self.containers.get(cid) if isinstance(cid, str) else None
        if c is None:
            conn.send(proto.ok())  # idempotent
            return
        if c.state in (STATE_RUNNING, STATE_STARTING):
            raise ShimError(proto.WRONG_STATE, f"container {c.id} is running; stop it first")
        if c.state == STATE_CREATING:
            raise ShimError(proto.WRONG_STATE, f"container {c.id} is still being created")
        self._destroy_container(c)
        conn.send(proto.ok())

    def _destroy_container(self, c: Container) -> None:
        if not c.reaped and c.pid:
            _kill_and_reap(c.pid)
            c.reaped = True
        if c.engine is not None:
            c.engine.release(c)
        try:
            c.cgroup.destroy()
        except OSError as e:
            log.warning("cannot remove cgroup %s: %s", c.cgroup.path, e)
        self._close_io(c)
        if c.chan is not None:
            self.sel.unregister(c.chan)
            c.chan.close()
            c.chan = None
        if c.start_w >= 0:
            os.close(c.start_w)
            c.start_w = -1
        for conn in list(c.attachers) + list(c.waiters):
            conn.close()
        _remove_dirs(c.upper, c.work)
        shutil.rmtree(c.state_dir, ignore_errors=True)
        self.containers.pop(c.id, None)

    def _close_io(self, c: Container) -> None:
        for fd, stream in list(c.out_fds.items()):
            self.sel.unregister(fd)
            os.close(fd)
            c.log.end(stream)
        c.out_fds.clear()
        c.pty_master = -1
        if c.stdin_writer is not None:
            c.stdin_writer.buf.clear()
            c.stdin_writer.close()
            c.stdin_writer = None
        c.log.close_file()

    def op_update(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        assert c.engine is not None
        c.engine.update(c, msg.get("resources") or {})
        conn.send(proto.ok())

    def op_stats(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        st = c.cgroup.stats()
        size, inodes = _disk_usage(c.upper) if c.upper else (None, None)
        conn.send(proto.ok(stats={**st.__dict__, "timestamp_ns": time.time_ns(), "writable_layer_bytes": size,
                                  "writable_layer_inodes": inodes, "writable_layer_mountpoint": c.upper}))

    def op_sandbox_stats(self, conn: Conn, _msg: dict[str, Any]) -> None:
        cg = self.host.hierarchy.cgroup(self.config.cgroup_parent)
        conn.send(proto.ok(stats={**cg.stats().__dict__, "timestamp_ns": time.time_ns()}))

    # ------------------------------------------------------------ exec

    def op_exec(self, conn: Conn, msg: dict[str, Any]) -> None:
        c = self._container(msg)
        if c.state != STATE_RUNNING or c.reaped:
            raise ShimError(proto.WRONG_STATE, f"container {c.id} is not running")
        process = _exec_process(c.spec.get("process") or {}, msg)
        assert c.engine is not None
        c.engine.exec(conn, c, process, msg)

    def _native_exec(self, conn: Conn, c: Container, process: dict[str, Any], msg: dict[str, Any]) -> None:
        """Fork the exec'd process into the container's namespaces and cgroup (runtime.linux.init)."""
        planned, security = _planned(lambda: cinit.plan_exec(process, c.seccomp))
        join_fds: dict[str, int] = {}
        pid_fd = -1
        try:
            for kind in ("ipc", "uts", "network", "cgroup", "mount", "user"):
                fd = os.open(f"/proc/{c.pid}/ns/{sc.NAMESPACE_PROC_NAMES[kind]}", os.O_RDONLY | os.O_CLOEXEC)
                if _same_file(fd, self.host_ns[kind]):
                    os.close(fd)
                else:
                    join_fds[kind] = fd
            pid_fd = os.open(f"/proc/{c.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            for fd in join_fds.values():
                os.close(fd)
            if pid_fd >= 0:
                os.close(pid_fd)
            raise ShimError(proto.WRONG_STATE, f"container {c.id} is not running") from None
        parent_chan, child_chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stdio, mine, theirs = _exec_stdio(msg)
        linux = c.spec.get("linux") or {}
        try:
            uid_maps = id_mappings(linux.get("uidMappings", []), "linux.uidMappings")
            gid_maps = id_mappings(linux.get("gidMappings", []), "linux.gidMappings")
        except SpecError:
            uid_maps = gid_maps = ()   # the container was created with them, so they were valid then
        ctx = cinit.ExecContext(process=planned, security=security, chan=child_chan, stdio=stdio,
                                join_fds=join_fds, uid_mappings=uid_maps, gid_mappings=gid_maps)
        try:
            same_pid_ns = _same_file(pid_fd, self.host_ns["pid"])
            pid = self._fork_in_pid_ns(None, None if same_pid_ns else pid_fd, c.cgroup,
                                       lambda procs: cinit.exec_process(ctx, procs))
        except BaseException:
            parent_chan.close()
            _close_fds(theirs)
            raise
        finally:
            os.close(pid_fd)
            for fd in (*join_fds.values(), *mine):
                os.close(fd)
            child_chan.close()
        self.exec_seq += 1
        e = Exec(id=f"{c.id[:12]}-{self.exec_seq}", container=c.id, pid=pid, chan=parent_chan,
                 fds_for_daemon=theirs, pending=conn)
        self.execs[e.id] = e
        parent_chan.setblocking(False)
        self.sel.register(parent_chan, selectors.EVENT_READ, lambda ev: self._on_exec_chan(e))

    def _on_exec_chan(self, e: Exec) -> None:
        assert e.chan is not None
        got = _read_child_chan(e.chan)
        if got is None:
            return
        msg, fds = got
        if msg is not None:
            if msg.get("pty") and fds:
                e.fds_for_daemon.append(fds.pop(0))
                e.reply_fields["tty"] = True
            for fd in fds:
                os.close(fd)
            if "error" in msg and e.pending is not None:
                err = msg["error"]
                e.pending.send(proto.error(err.get("kind", proto.FAILURE), err.get("message", "?"),
                                           err.get("field")))
                e.pending = None
                self._discard_exec_fds(e)
            return
        self.sel.unregister(e.chan)
        e.chan.close()
        e.chan = None
        if e.pending is not None:
            # execve succeeded (or the child died without a word: the exit code will say).
            e.pending.send(proto.ok(exec_id=e.id, pid=e.pid, **e.reply_fields), e.fds_for_daemon)
            e.pending = None
            e.fds_for_daemon = []  # the connection owns (and closes) them now
        self._discard_exec_fds(e)

    def _discard_exec_fds(self, e: Exec) -> None:
        for fd in e.fds_for_daemon:
            os.close(fd)
        e.fds_for_daemon.clear()

    def _exec_exited(self, e: Exec, code: int) -> None:
        e.exit_code = 128 - code if code < 0 else code
        for conn in e.waiters:
            conn.send(proto.ok(exit_code=e.exit_code))
        e.waiters.clear()
        self.finished_execs.append(e.id)
        while len(self.finished_execs) > EXEC_HISTORY:
            self.execs.pop(self.finished_execs.popleft(), None)

    def op_exec_wait(self, conn: Conn, msg: dict[str, Any]) -> None:
        e = self.execs.get(str(msg.get("exec_id")))
        if e is None:
            raise ShimError(proto.NOT_FOUND, f"exec {msg.get('exec_id')} not found")
        if e.exit_code is not None:
            conn.send(proto.ok(exit_code=e.exit_code))
        else:
            e.waiters.append(conn)

    def op_exec_kill(self, conn: Conn, msg: dict[str, Any]) -> None:
        e = self.execs.get(str(msg.get("exec_id")))
        if e is not None and e.exit_code is None:
            sig = int(msg.get("signal", signal.SIGKILL))
            try:
                os.killpg(e.pid, sig)  # a native exec is its own group leader
            except ProcessLookupError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(e.pid, sig)   # a runc exec may not be
        conn.send(proto.ok())

    def op_exec_forget(self, conn: Conn, msg: dict[str, Any]) -> None:
        e = self.execs.get(str(msg.get("exec_id")))
        if e is not None and e.exit_code is not None:
            self.execs.pop(e.id, None)
        conn.send(proto.ok())


# ---------------------------------------------------------------- helpers


def _planned(plan: Callable[[], T]) -> T:
    """A planning step of runtime.linux.init, run in the shim: its failure is the request's answer."""
    try:
        return plan()
    except Exception as e:  # noqa: BLE001 - spec errors of every kind, mapped as the child would report them
        raise ShimError(*cinit.error_of(e)) from None


def _read_child_chan(chan: socket.socket) -> tuple[dict[str, Any] | None, list[int]] | None:
    """One message (and its fds) from a forked child's channel; None while nothing is there yet; no message
    at EOF, which means execve succeeded (the channel is close-on-exec) or the child died."""
    try:
        data, fds = proto.recv_raw(chan)
    except BlockingIOError:
        return None
    except OSError:
        return None, []
    return (proto.decode(data) if data else None), fds


def fork_into(cgroup: cgroups.Cgroup | None, clone3: bool) -> tuple[int, tuple[str, ...]]:
    """fork(); with `clone3`, straight into the cgroup's v2 directory (no RCU grace period, see
    syscalls.fork). Returns the pid and the cgroup files the child still writes itself (the v1
    hierarchies, and v2 without clone3: runtime.linux.init._enter_cgroup)."""
    # Everything is computed before the fork: in the child, each page touched is a copy-on-write fault.
    v2 = cgroup.v2_dir() if cgroup is not None and clone3 else None
    procs = tuple(cgroup.join_files(started_in_v2=v2 is not None)) if cgroup is not None else ()
    if v2 is None:
        return sc.fork(), procs
    try:
        fd = os.open(v2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ShimError(proto.FAILURE, f"cannot open cgroup {v2}: {e.strerror}", "linux.cgroupsPath") from None
    try:
        pid = sc.fork(fd)
    except OSError as e:
        raise ShimError(proto.FAILURE, f"cannot start a process in cgroup {v2}: {e.strerror}",
                        "linux.cgroupsPath") from None
    finally:
        os.close(fd)            # in the child too: it needs no copy
    return pid, procs


def _exec_process(container: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
    """The container's OCI process with the exec's command, and its env and cwd when given (checked by
    init.plan_exec)."""
    args = msg.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args) or not args[0]:
        raise ShimError(proto.INVALID_SPEC, "no command to execute", "cmd")
    out = {**container, "args": args, "terminal": bool(msg.get("tty"))}
    if isinstance(msg.get("env"), list):
        out["env"] = msg["env"]
    if msg.get("cwd"):
        out["cwd"] = msg["cwd"]
    return out


def _exec_stdio(msg: dict[str, Any]) -> tuple[cinit.Stdio, list[int], list[int]]:
    """(child stdio, fds the shim closes after fork, fds sent to the daemon: stdin_w, stdout_r, stderr_r)."""
    if msg.get("tty"):
        return cinit.Stdio(tty=True), [], []
    child: list[int] = []
    mine: list[int] = []
    theirs: list[int] = []
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    mine.append(null)
    for name, reading in (("stdin", True), ("stdout", False), ("stderr", False)):
        if msg.get(name):
            r, w = os.pipe()
            child.append(r if reading else w)
            mine.append(r if reading else w)
            theirs.append(w if reading else r)
        else:
            child.append(null)
    return cinit.Stdio(stdin=child[0], stdout=child[1], stderr=child[2]), mine, theirs


def _resize(fd: int, width: int, height: int) -> None:
    if not (0 < width < 65536 and 0 < height < 65536):
        raise ShimError(proto.INVALID_SPEC, f"terminal size {width}x{height} is out of range", "size")
    fcntl.ioctl(fd, sc.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def _kill_pod_init_and_reap(init_pid: int, timeout: float = 10.0) -> None:
    """SIGKILL a PID namespace's init and reap it, reaping meanwhile every other child of ours that dies with the
    namespace (the init's own exit waits for them: a plain waitpid(init) would deadlock)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(init_pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == init_pid:
            return
        if pid == 0:
            time.sleep(0.005)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


def _remove_dirs(*dirs: str) -> None:
    for d in dirs:
        if d:
            shutil.rmtree(d, ignore_errors=True)


def _disk_usage(path: str) -> tuple[int, int]:
    """Bytes (allocated blocks) and inodes under `path`, hard links counted once."""
    size = inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                inodes += 1
                size += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return size, inodes


def cleanup_pod_mounts(pod_dir: str) -> None:
    """Unmount the namespace pins and the pod's /dev/shm (idempotent, also used by the backend)."""
    paths = pod_paths(pod_dir)
    for key in ("ipc", "uts", "user", "shm"):
        try:
            sc.umount2(paths[key], sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                log.warning("cannot unmount %s: %s", paths[key], e)


def _pod_init_main() -> NoReturn:
    """PID 1 of a shared PID namespace: nothing but reaping, until the shim kills it."""
    try:
        sc.set_process_name("cri-shim-init")
        signal.set_wakeup_fd(-1)
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        # SIGCHLD stays blocked and is taken with sigwait: no window between "nothing to reap" and sleeping.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            signal.sigwait({signal.SIGCHLD})
    finally:
        os._exit(0)


def warm_up() -> HostFacts:
    """Run, in the zygote before it forks, the code paths every shim runs, so the objects they create
    once (ctypes function pointers, caches, specialised bytecode) exist already and stay shared; and find
    out the host's facts every shim needs."""
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 0)
    selectors.DefaultSelector().close()
    hierarchy = cgroups.open_hierarchy()
    hierarchy.cgroup("/cri-shim-warm-up/x").dirs()
    proto.decode(proto.encode(proto.ok(pid=1, namespaces={"ipc": "/x"}, containers=[])))
    r, w = os.pipe()
    for fd in (r, w):
        _set_nonblocking(fd)
        os.close(fd)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proto.send(a, proto.request("status"))
    proto.recv(b)
    a.close()
    b.close()
    # What every container init runs first: checking and planning a spec (pure functions).
    sample = {"process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                          "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                           "permitted": ["CAP_KILL"]},
                          "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]},
              "root": {"path": "rootfs"}, "hostname": "warm-up",
              "mounts": [{"destination": "/proc", "source": "proc", "type": "proc", "options": ["nosuid"]},
                         {"destination": "/dev", "source": "tmpfs", "type": "tmpfs", "options": ["mode=755"]}],
              "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "pid"}],
                        "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}}
    shim_view(sample, "/")
    cinit.warm_up(sample)
    return HostFacts(hierarchy, mounts.host_cgroup_mounts({}), sc.can_fork_into_cgroup())


def run_pod(config: dict[str, Any], reply: socket.socket, host: HostFacts) -> NoReturn:
    """Entry of a freshly forked shim (from the zygote): set up, answer on `reply`, serve forever."""
    status = 1
    try:
        cfg = PodConfig.from_json(config)
        os.makedirs(cfg.pod_dir, mode=0o700, exist_ok=True)
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        sc.set_process_name("cri-shim-pod")
        shim = Shim(cfg, host)
        try:
            info = shim.setup()
        except ShimError as e:
            proto.send(reply, e.reply())
            os._exit(1)
        except OSError as e:
            proto.send(reply, proto.error(proto.FAILURE, f"pod shim setup failed: {e}"))
            os._exit(1)
        proto.send(reply, proto.ok(**info))
        reply.close()
        log.debug("pod shim for %s serving on %s", cfg.sandbox_id, shim.paths["sock"])
        status = 0
        shim.run()
    except BaseException:  # noqa: BLE001 - log whatever killed the monitor
        log.exception("pod shim failed")
    finally:
        os._exit(status)
