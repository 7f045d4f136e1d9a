"""The pod shim's second container engine: an installed runc, driven with the container's own bundle.

The pod shim picks the engine per container (the create request's "engine": "native" forks
runtime.linux.init, "runc" calls this through shim.RuncEngine). Everything around the container stays the shim's: the
cgroup it made, the stdio pipes (runc passes them through to the container untouched, so logs,
attach and reopen work as for native containers), the exit status (the shim is a child subreaper:
the container's init is re-parented to it when `runc create` exits, and the shim reaps it).

What runc needs that the native init does on its own, the shim does before `runc create`:
- the rootfs: the same overlay of the image layers (runtime.linux.mounts.mount_rootfs), mounted
  on the bundle's root.path in the host mount namespace, since runc only bind-mounts root.path;
- the pod mounts the native init adds implicitly (hosts, resolv.conf, hostname from the sandbox
  dir; the pod's /dev/shm): appended to a copy of config.json.
The daemon's bundle stays byte-identical for both engines; runc reads the copy in
`<container state dir>/runc-bundle`, which differs from it only by those mounts, an absolute
root.path, root.readonly and the cgroup path the shim chose.

runc's state lives in `<pod dir>/runc` (`runc --root`), so it goes with the pod.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.base import RuntimeFailure
from runtime.external.runc import Runc, RuncConfig, Stdio
from runtime.linux import mounts
from runtime.linux import syscalls as sc

log = logging.getLogger("cri-shim.shim")

ENGINE_NATIVE, ENGINE_RUNC = "native", "runc"
ENGINES = (ENGINE_NATIVE, ENGINE_RUNC)
# The shim ignores SIGTERM/SIGINT/SIGHUP; ignored dispositions survive execve, so runc (and through it
# the container) would inherit them. env resets every signal to its default first.
LAUNCHER = ("/usr/bin/env", "--default-signal")
SANDBOX_FILES = ("hosts", "resolv.conf", "hostname")
BIND_OPTIONS = ["rbind", "nosuid", "nodev", "noexec"]


@dataclass(frozen=True)
class PodMounts:
    """What the pod contributes to every container's mounts (see the module doc)."""

    sandbox_dir: str
    shm: str            # the pod's /dev/shm tmpfs, "" when the pod has no IPC namespace of its own
    ipc_pin: str        # the pod's pinned IPC namespace


@dataclass(frozen=True)
class CreateRequest:
    root_path: str
    layers: tuple[str, ...]
    upper: str
    work: str
    readonly: bool
    cgroups_path: str
    terminal: bool


class ConsoleSocket:
    """`runc --console-socket`: runc connects and sends the master of the terminal it made (SCM_RIGHTS).

    An abstract socket, because a path under the pod's state dir would not fit in sun_path. It is only
    listened on during one runc call, only one fd is taken, and it must come from a root process."""

    def __init__(self) -> None:
        self.address = f"cri-shim-console-{os.getpid()}-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.address)
        self.sock.listen(1)

    @property
    def path(self) -> str:
        return "@" + self.address     # Go's net.Dial reads a leading @ as the abstract namespace

    def receive(self) -> int:
        """The terminal master runc sent (it has already sent it when its call returned)."""
        self.sock.settimeout(5.0)
        conn, _ = self.sock.accept()
        with conn:
            uid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[4:8]   # struct ucred {pid, uid, gid}
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
        if uid != b"\0\0\0\0" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuntimeFailure("tty: runc did not send one terminal through the console socket")
        return fds[0]

    def close(self) -> None:
        self.sock.close()


class RuncDriver:
    def __init__(self, binary: str, root: str) -> None:
        if not binary or not os.path.isabs(binary):
            raise RuntimeFailure(f"runc_path: {binary!r} must be an absolute path to the runc binary")
        if not os.access(binary, os.X_OK):
            raise RuntimeFailure(f"runc_path: {binary} is not an executable")
        launcher = LAUNCHER if os.access(LAUNCHER[0], os.X_OK) else ()
        self.root = root
        self.runc = Runc(RuncConfig(root=root, binary=binary, launcher=launcher))

    def create(self, cid: str, spec: Mapping[str, Any], rootfs: CreateRequest, pod: PodMounts,
               state_dir: str, stdio: Stdio, undo: list[Callable[[], None]]) -> tuple[int, int]:
        """Mount the rootfs, write runc's bundle, `runc create`; returns the container init's pid and,
        when the spec asks for a terminal, its master (else -1)."""
        try:
            mounts.mount_rootfs(rootfs.root_path, rootfs.layers, rootfs.upper, rootfs.work)
        except mounts.MountError as e:
            raise RuntimeFailure(f"{e.field}: {e.message}") from None
        except OSError as e:
            raise RuntimeFailure(f"cannot mount the rootfs on {rootfs.root_path}: {e.strerror}") from None
        undo.append(lambda: unmount_rootfs(rootfs.root_path))
        runc_bundle = os.path.join(state_dir, "runc-bundle")
        os.makedirs(runc_bundle, mode=0o700, exist_ok=True)
        with open(os.path.join(runc_bundle, "config.json"), "w") as f:
            json.dump(runc_spec(spec, rootfs, pod), f)
        undo.append(lambda: self.delete(cid))
        pid_file = os.path.join(state_dir, "runc.pid")
        if not rootfs.terminal:
            return self.runc.create(cid, runc_bundle, pid_file=pid_file, stdio=stdio), -1
        console = ConsoleSocket()
        try:
            pid = self.runc.create(cid, runc_bundle, pid_file=pid_file, stdio=stdio, console_socket=console.path)
            return pid, console.receive()
        finally:
            console.close()

    def start(self, cid: str) -> None:
        self.runc.start(cid)

    def kill(self, cid: str, sig: int, all_processes: bool) -> None:
        try:
            self.runc.kill(cid, sig, all_processes=all_processes)
        except RuntimeFailure as e:
            # Already stopped: the exit path has it (or is about to).
            log.debug("runc kill %s: %s", cid, e.message)

    def exec(self, cid: str, process: Mapping[str, Any], state_dir: str, seq: int, stdio: Stdio) -> tuple[int, int]:
        """`runc exec --detach`; returns the process' pid and its terminal master (-1 without a terminal)."""
        pid_file = os.path.join(state_dir, f"exec-{seq}.pid")
        console = ConsoleSocket() if process.get("terminal") else None
        try:
            pid = self.runc.exec(cid, process, pid_file=pid_file, stdio=stdio,
                                 console_socket=console.path if console else None)
            return pid, console.receive() if console else -1
        finally:
            if console is not None:
                console.close()
            try:
                os.unlink(pid_file)
            except FileNotFoundError:
                pass

    def update(self, cid: str, resources: Mapping[str, Any]) -> None:
        self.runc.update(cid, resources)

    def delete(self, cid: str) -> None:
        try:
            self.runc.delete(cid, force=True)
        except RuntimeFailure as e:
            log.warning("runc delete %s: %s", cid, e.message)


def runc_spec(spec: Mapping[str, Any], rootfs: CreateRequest, pod: PodMounts) -> dict[str, Any]:
    """The daemon's spec plus what the native init adds on its own (see the module doc)."""
    out: dict[str, Any] = json.loads(json.dumps(spec))
    root = dict(out.get("root") or {})
    root["path"] = rootfs.root_path
    root["readonly"] = bool(root.get("readonly")) or rootfs.readonly
    out["root"] = root
    out["process"] = {**(out.get("process") or {}), "terminal": rootfs.terminal}
    linux = out.setdefault("linux", {})
    linux["cgroupsPath"] = rootfs.cgroups_path
    spec_mounts: list[dict[str, Any]] = list(out.get("mounts") or [])
    taken = {m.get("destination") for m in spec_mounts}
    ipc_path = next((ns.get("path") for ns in linux.get("namespaces") or [] if ns.get("type") == "ipc"), None)
    if pod.shm and pod.ipc_pin and ipc_path == pod.ipc_pin:
        # Containers in the pod's IPC namespace share its /dev/shm, as SysV IPC is shared there: mounted
        # over the spec's own tmpfs, exactly as the native init stacks it.
        spec_mounts = [x for m in spec_mounts for x in (
            [m, {"destination": "/dev/shm", "type": "bind", "source": pod.shm, "options": BIND_OPTIONS}]
            if m.get("destination") == "/dev/shm" and m.get("type") == "tmpfs" else [m])]
    for name in SANDBOX_FILES:
        src = os.path.join(pod.sandbox_dir, name)
        dest = f"/etc/{name}"
        if pod.sandbox_dir and dest not in taken and os.path.isfile(src):
            spec_mounts.append({"destination": dest, "type": "bind", "source": src, "options": BIND_OPTIONS})
    out["mounts"] = spec_mounts
    return out


def unmount_rootfs(root_path: str) -> None:
    """Idempotent: the overlay (or bind) the shim mounted for runc on root.path."""
    try:
        sc.umount2(root_path, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            log.warning("cannot unmount %s: %s", root_path, e)


def release(record: Mapping[str, Any], cid: str) -> None:
    """For the daemon, after a pod shim died: what a runc container left (runc's state and cgroup, the
    rootfs mount). `record` is the container's state.json."""
    if record.get("engine") != ENGINE_RUNC:
        return
    binary, root = str(record.get("runc_path") or ""), str(record.get("runc_root") or "")
    if binary and root and os.path.isdir(root):
        try:
            RuncDriver(binary, root).delete(cid)
        except RuntimeFailure as e:
            log.warning("runc container %s: %s", cid, e.message)
    if record.get("rootfs_mount"):
        unmount_rootfs(str(record["rootfs_mount"]))
