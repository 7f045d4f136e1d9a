"""What a freshly forked child of the pod shim does to become a container process.

Two entry points, both never returning (the child execs or _exits):
- `container_init`: the container's first process. It joins or creates the
  namespaces, enters the cgroup, builds the root filesystem (overlay, /proc,
  /dev, /sys, the spec's mounts), pivots into it, sets hostname, rlimits, OOM
  score and stdio, checks the entrypoint, reports "ready" and waits for the
  start signal; then switches user, applies process security, marks every fd
  above 2 close-on-exec (CVE-2024-21626) and execs.
- `exec_process`: a new process in a running container's namespaces and cgroup
  (ExecSync / Exec), with the container's user, env and cwd unless overridden.

Progress and errors go back to the shim over `chan` (a socketpair end): a JSON
{"ready": true}, a {"pty": true} message carrying the pty master fd, or an
{"error": {...}} naming the field. A successful execve closes `chan`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import resource
import signal
import socket
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from runtime import base
from runtime.linux import masked_paths, mounts, process_security, seccomp, sysctls
from runtime.linux import protocol as proto
from runtime.linux import syscalls as sc
from runtime.linux.process_security import PreparedSecurity
from runtime.linux.mounts import MountError
from runtime.linux.spec import (ContainerPlan, MountPlan, ProcessPlan, SpecError, container_plan, host_id,
                                process_plan)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Order matters: the mount namespace last, because joining it changes root and cwd.
JOIN_ORDER = ("ipc", "uts", "network", "cgroup", "mount")


class InitFailure(Exception):
    def __init__(self, kind: str, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field_name


@dataclass
class Stdio:
    """The child's stdio: pipe ends / /dev/null from the shim, or a pty made inside the container."""

    stdin: int = -1
    stdout: int = -1
    stderr: int = -1
    tty: bool = False


@dataclass
class InitContext:
    """What the shim hands a container's init: the raw spec (planned by `prepare`), the pieces the shim
    made (cgroup, stdio, overlay dirs) and the channel."""

    spec: Mapping[str, Any]
    bundle: str
    chan: socket.socket
    stdio: Stdio
    readonly: bool = False
    seccomp: Mapping[str, Any] | None = None                      # compiled by the daemon (hex BPF)
    sandbox_dir: str = ""
    pod_shm: str = ""                                             # the pod's /dev/shm tmpfs (pods with their own IPC)
    pod_ipc: str = ""                                             # the pod's pinned IPC namespace
    layers: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    start_fd: int = -1
    cgroup_mounts: tuple[mounts.HostCgroupMount, ...] = ()      # the host's hierarchies + this cgroup in each


@dataclass
class ExecContext:
    process: ProcessPlan                                         # plan_exec of the container's process + overrides
    security: PreparedSecurity
    chan: socket.socket
    stdio: Stdio
    join_fds: Mapping[str, int] = field(default_factory=dict)
    # the container's linux.uidMappings / gidMappings (its terminal is given to the user through them)
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    gid_mappings: tuple[tuple[int, int, int], ...] = ()


@dataclass
class Prepared:
    """The checked plan of a container, made by the shim just before it forks the init (see prepare)."""

    plan: ContainerPlan
    security: PreparedSecurity
    join_fds: dict[str, int]
    new_namespaces: int
    extra_mounts: tuple[MountPlan, ...]
    idmap: mounts.IdMap | None = None          # the pod's user namespace, joined last (see _join_userns)

    def fds(self) -> list[int]:
        """The namespace fds it holds: the child keeps them until it joins, the shim closes its copies after
        the fork."""
        return [*self.join_fds.values(), *([self.idmap.userns_fd] if self.idmap else [])]


def container_init(ctx: InitContext, prep: Prepared, cgroup_procs: tuple[str, ...]) -> NoReturn:
    """The forked child: set the container up as `prep` says, report ready, wait for start, execve.
    `cgroup_procs`: the files it writes to enter the container's cgroup (the shim may have forked it into
    part of it already)."""
    try:
        _prepare_child(ctx.chan, ctx.stdio, ctx.start_fd, *prep.fds())
        # Not dumpable until execve: nothing already in the container may open /proc/<us>/exe (the host's
        # python, CVE-2019-5736) or ptrace us while we still hold host resources.
        process_security.set_dumpable(False)
        plan = prep.plan
        _enter_cgroup(cgroup_procs)
        _join(prep.join_fds)
        _step(lambda: sc.unshare(prep.new_namespaces), "linux.namespaces", "cannot create namespaces")
        if plan.hostname:
            _step(lambda: socket.sethostname(plan.hostname), "hostname", "cannot set the hostname")
        _step(lambda: sysctls.write_sysctls(prep.security.sysctls), "linux.sysctl", "cannot set sysctls")
        _build_root(ctx, prep)
        _set_limits(plan.process)
        _setup_stdio(ctx.chan, ctx.stdio)
        if ctx.stdio.tty and prep.idmap is not None:
            _give_tty_to(plan.uid_mappings, plan.gid_mappings, plan.process.uid, plan.process.gid)
        _chdir(plan.process.cwd, "process.cwd", create=True)
        path = find_executable(plan.process, "process.args")
        proto.send(ctx.chan, {"ready": True})
        if os.read(ctx.start_fd, 1) != b"s":
            os._exit(0)  # the shim deleted us before start
        os.close(ctx.start_fd)
        _exec(plan.process, prep.security, path, prep.idmap.userns_fd if prep.idmap else -1)
    except BaseException as e:  # noqa: BLE001 - the child must report and _exit, never unwind into the shim
        _report_and_exit(ctx.chan, e)


def exec_process(ctx: ExecContext, cgroup_procs: tuple[str, ...]) -> NoReturn:
    try:
        _prepare_child(ctx.chan, ctx.stdio, *ctx.join_fds.values())
        process_security.set_dumpable(False)
        process, security = ctx.process, ctx.security
        _enter_cgroup(cgroup_procs)
        _join(ctx.join_fds)
        _set_limits(process)
        _setup_stdio(ctx.chan, ctx.stdio)
        if ctx.stdio.tty and "user" in ctx.join_fds:
            _give_tty_to(ctx.uid_mappings, ctx.gid_mappings, process.uid, process.gid)
        _chdir(process.cwd, "cwd", create=False)
        path = find_executable(process, "args")
        _exec(process, security, path, ctx.join_fds.get("user", -1))
    except BaseException as e:  # noqa: BLE001
        _report_and_exit(ctx.chan, e)


def plan_exec(process: Mapping[str, Any],
              seccomp: Mapping[str, Any] | None) -> tuple[ProcessPlan, PreparedSecurity]:
    """An exec'd process's plan, made in the shim before the fork (see prepare for why)."""
    security = process_security.prepare_process(process, None)
    return process_plan(process, "process"), _with_seccomp(security, seccomp)


def prepare(ctx: InitContext) -> Prepared:
    """Check and plan the whole spec; raises InitFailure naming the field (CreateContainer's answer).

    The shim calls this just before it forks the init, not the child: in a freshly forked interpreter every
    page the planning touches is a copy-on-write fault (about 3 us each on a VM, ~200 of them here), while
    in the shim those pages are its own. The namespace fds it opens go to the child with the plan."""
    plan = container_plan(ctx.spec, ctx.bundle)
    if ctx.readonly:
        plan = dataclasses.replace(plan, root_readonly=True)
    without_seccomp = {**ctx.spec, "linux": {**(ctx.spec.get("linux") or {}), "seccomp": None}}
    security = _with_seccomp(process_security.prepare(without_seccomp), ctx.seccomp)
    join: dict[str, int] = {}
    try:
        flags = _namespace_plan(plan, join)
        idmap = _userns(plan)
    except BaseException:
        for fd in join.values():
            os.close(fd)
        raise
    return Prepared(plan, security, join, flags,
                    _pod_mounts(plan, ctx.sandbox_dir) + _pod_shm_mount(plan, ctx.pod_shm, ctx.pod_ipc), idmap)


def _userns(plan: ContainerPlan) -> mounts.IdMap | None:
    """The pod's user namespace. The init sets everything up as host root (which owns that user namespace,
    so it may also act on the pod's netns inside it) in a mount namespace owned by the host, so /proc,
    /sys, mqueue and devpts mount as usual and the container can mount nothing; it joins the user
    namespace last, just before switching user: the process then has capabilities only inside it, runs
    as the mapped host ids, and sees the image through idmapped layers."""
    root = plan.host_root()
    if root is None:
        return None
    path = plan.namespaces["user"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InitFailure(proto.INVALID_SPEC, f"cannot open user namespace {path}: {e.strerror}",
                          "linux.namespaces") from None
    return mounts.IdMap(userns_fd=fd, root_uid=root[0], root_gid=root[1])


def warm_up(spec: Mapping[str, Any]) -> None:
    """Plan a sample spec in the zygote, so every shim and init shares the already-specialised code."""
    plan = container_plan(spec, "/")
    process_security.prepare(spec)
    _pod_mounts(plan, "")


def _with_seccomp(prepared: PreparedSecurity, compiled: Mapping[str, Any] | None) -> PreparedSecurity:
    """The daemon compiles seccomp profiles once (and caches them); the child only loads the BPF."""
    if not compiled:
        return prepared
    return dataclasses.replace(prepared, seccomp=seccomp.CompiledFilter(
        bpf=bytes.fromhex(compiled["bpf"]), flags=int(compiled["flags"]), seccomp_nr=int(compiled["nr"])))


def _namespace_plan(plan: ContainerPlan, join: dict[str, int]) -> int:
    """Fills `join` with fds to join (paths that differ from where the shim is, and so the child) and returns
    the CLONE_NEW* flags for new ones. A type absent from the spec is the host's. PID: done by the shim."""
    flags = sc.CLONE_NEWNS
    for kind in ("ipc", "uts", "network", "cgroup"):
        if kind not in plan.namespaces:
            continue
        path = plan.namespaces[kind]
        if not path:
            flags |= sc.NAMESPACE_FLAGS[kind]
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise InitFailure(proto.INVALID_SPEC, f"cannot open namespace {path}: {e.strerror}",
                              "linux.namespaces") from None
        mine = os.stat(f"/proc/self/ns/{sc.NAMESPACE_PROC_NAMES[kind]}")
        theirs = os.fstat(fd)
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            os.close(fd)
        else:
            join[kind] = fd
    return flags


def _pod_mounts(plan: ContainerPlan, sandbox_dir: str) -> tuple[MountPlan, ...]:
    """hosts, resolv.conf and hostname from the sandbox dir, unless the spec mounts them itself."""
    out = []
    idmap = "user" in plan.namespaces      # root-owned files on the host show as root-owned inside
    taken = {m.destination for m in plan.mounts}
    for name in ("hosts", "resolv.conf", "hostname"):
        src = os.path.join(sandbox_dir, name)
        dest = f"/etc/{name}"
        if sandbox_dir and dest not in taken and os.path.isfile(src):
            out.append(MountPlan(field=f"sandbox {name}", destination=dest, source=src, type="bind",
                                 flags=sc.MS_BIND | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                                 propagation=(sc.MS_PRIVATE,), data="", bind=True, idmap=idmap))
    return tuple(out)


def _pod_shm_mount(plan: ContainerPlan, pod_shm: str, pod_ipc: str) -> tuple[MountPlan, ...]:
    """The pod's /dev/shm over the spec's default tmpfs, for a container in the pod's IPC namespace: the
    containers of a pod share SysV IPC there, and POSIX shm (/dev/shm) must be shared the same way."""
    shm = next((m for m in plan.mounts if m.destination == "/dev/shm"), None)
    if not pod_shm or not pod_ipc or shm is None or shm.type != "tmpfs" or plan.namespaces.get("ipc") != pod_ipc:
        return ()
    return (MountPlan(field="pod /dev/shm", destination="/dev/shm", source=pod_shm, type="bind",
                      flags=sc.MS_BIND | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, propagation=(sc.MS_PRIVATE,),
                      data="", bind=True),)


# ---------------------------------------------------------------- steps


def _prepare_child(chan: socket.socket, stdio: Stdio, *keep: int) -> None:
    """Default signal dispositions, own session (so a timeout can kill the whole group), no fd of the shim's."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXFSZ):
        # Python ignores SIGPIPE; an ignored signal stays ignored across execve, so reset it.
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.setsid()
    _close_all_but({chan.fileno(), stdio.stdin, stdio.stdout, stdio.stderr, *keep})


def _close_all_but(keep: set[int]) -> None:
    """Close every fd above 2 that is not in `keep` (the shim's sockets, other containers' pipes, ...)."""
    first = 3
    for fd in sorted(fd for fd in keep if fd > 2):
        if fd > first:
            sc.close_range(first, fd - 1)
        first = fd + 1
    sc.close_range(first, 0xFFFFFFFF)


def _enter_cgroup(procs_files: tuple[str, ...]) -> None:
    for path in procs_files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as e:
            raise InitFailure(proto.FAILURE, f"cannot enter cgroup ({path}): {e.strerror}",
                              "linux.cgroupsPath") from None


def _join(fds: Mapping[str, int]) -> None:
    for kind in JOIN_ORDER:
        fd = fds.get(kind)
        if fd is None:
            continue
        try:
            sc.setns(fd, sc.NAMESPACE_FLAGS[kind])
        except OSError as e:
            raise InitFailure(proto.FAILURE, f"cannot join the {kind} namespace: {e.strerror}",
                              "linux.namespaces") from None
        os.close(fd)


def _build_root(ctx: InitContext, prep: Prepared) -> None:
    plan = prep.plan
    rootfs = plan.root_path
    _step(lambda: sc.mount(None, "/", None, plan.rootfs_propagation), "linux.rootfsPropagation",
          "cannot set the propagation of /")
    if plan.rootfs_propagation & sc.MS_SHARED:
        # Only a shared / would carry the rootfs mount back to the host (and make pivot_root refuse).
        _step(lambda: mounts.make_root_private_parent(rootfs), "root.path", "cannot prepare the rootfs mount")
    _step(lambda: mounts.mount_rootfs(rootfs, ctx.layers, ctx.upper, ctx.work, prep.idmap), "rootfs",
          "cannot mount the root filesystem")
    root_fd = os.open(rootfs, mounts.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dev_is_tmpfs = False
        new_cgroupns = bool(prep.new_namespaces & sc.CLONE_NEWCGROUP)
        for m in (*plan.mounts, *prep.extra_mounts):
            mounts.mount_one(root_fd, m, ctx.cgroup_mounts, new_cgroupns, prep.idmap)
            dev_is_tmpfs = dev_is_tmpfs or (m.destination == "/dev" and m.type == "tmpfs")
        if dev_is_tmpfs:
            mounts.make_devices(root_fd, mounts.DEFAULT_DEVICES)
            mounts.make_dev_symlinks(root_fd)
        mounts.make_devices(root_fd, plan.devices)
        _step(lambda: mounts.pivot_root(root_fd), "root.path", "cannot pivot into the root filesystem")
    finally:
        os.close(root_fd)
    _step(lambda: masked_paths.mask_paths("/", plan.masked_paths, plan.readonly_paths), "linux.maskedPaths",
          "cannot mask paths")
    if plan.root_readonly:
        _step(mounts.remount_root_readonly, "root.readonly", "cannot make the root filesystem read-only")


def _set_limits(p: ProcessPlan) -> None:
    if p.oom_score_adj is not None:
        _set_oom_score_adj(p.oom_score_adj)
    for res, soft, hard in p.rlimits:
        try:
            resource.prlimit(0, res, (soft, hard))
        except (OSError, ValueError) as e:
            raise InitFailure(proto.INVALID_SPEC, f"cannot set rlimit {res} to {soft}/{hard}: {e}",
                              "process.rlimits") from None


def _set_oom_score_adj(value: int) -> None:
    """Lowering needs CAP_SYS_RESOURCE; without it keep the current value (containerd's
    restrict_oom_score_adj) instead of failing the container."""
    with open("/proc/self/oom_score_adj", "r+") as f:
        current = int(f.read())
        if value < current:
            return
        f.seek(0)
        try:
            f.write(str(value))
            f.flush()
        except OSError as e:
            raise InitFailure(proto.FAILURE, f"cannot set oom_score_adj {value}: {e.strerror}",
                              "process.oomScoreAdj") from None


def _setup_stdio(chan: socket.socket, stdio: Stdio) -> None:
    if stdio.tty:
        master, slave = _open_pty()
        _mount_console(slave)
        proto.send(chan, {"pty": True}, [master])
        os.close(master)
        for target in (0, 1, 2):
            os.dup2(slave, target)
        fcntl.ioctl(0, sc.TIOCSCTTY, 0)
        if slave > 2:
            os.close(slave)
        return
    for fd, target in ((stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)):
        if fd >= 0:
            os.dup2(fd, target)
    for fd in {stdio.stdin, stdio.stdout, stdio.stderr}:
        if fd > 2:
            os.close(fd)


def _give_tty_to(uid_mappings: tuple[tuple[int, int, int], ...], gid_mappings: tuple[tuple[int, int, int], ...],
                 uid: int, gid: int) -> None:
    """The pty was made by host root, an id the user namespace does not map: give it to the container's user
    (as seen from the host), so reopening its own terminal by name works inside."""
    try:
        os.fchown(0, host_id(uid_mappings, uid), host_id(gid_mappings, gid))
    except (OSError, SpecError) as e:
        raise InitFailure(proto.FAILURE, f"cannot give the terminal to the container's user: {e}",
                          "process.terminal") from None


def _mount_console(slave: int) -> None:
    """With process.terminal, /dev/console is the container's terminal (OCI default devices; runc does the
    same): a bind mount of the pty over a placeholder file. Never through a symlink a rootfs might put there."""
    try:
        try:
            target = os.open("/dev/console", mounts.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            os.mknod("/dev/console", 0o600 | stat.S_IFREG)
            target = os.open("/dev/console", mounts.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mode = os.fstat(target).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
                raise InitFailure(proto.INVALID_SPEC, "/dev/console in the container is not a file or device",
                                  "process.terminal")
            sc.mount(mounts.fd_path(slave), mounts.fd_path(target), None, sc.MS_BIND)
        finally:
            os.close(target)
    except OSError as e:
        raise InitFailure(proto.FAILURE, f"cannot set up /dev/console: {e.strerror or e}", "process.terminal") \
            from None


def _open_pty() -> tuple[int, int]:
    """A pty from the container's own devpts instance (so `tty` names a path that exists inside)."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise InitFailure(proto.FAILURE, f"cannot open /dev/ptmx in the container: {e.strerror}",
                          "process.terminal") from None
    fcntl.ioctl(master, sc.TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, sc.TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    return master, int(slave)


def _chdir(cwd: str, field_name: str, create: bool) -> None:
    try:
        if create:
            os.makedirs(cwd, 0o755, exist_ok=True)
        os.chdir(cwd)
        # CVE-2024-21626: a cwd reached through a leaked fd would be outside the root; getcwd says so.
        here = os.getcwd()
    except OSError as e:
        raise InitFailure(proto.INVALID_SPEC, f"cannot use working directory {cwd}: {e.strerror}",
                          field_name) from None
    if not here.startswith("/"):
        raise InitFailure(proto.INVALID_SPEC, f"working directory {cwd} is outside the container", field_name)


def find_executable(p: ProcessPlan, field_name: str) -> str:
    name = p.args[0]
    if "/" in name:
        candidates = [name]
    else:
        path = next((e[5:] for e in reversed(p.env) if e.startswith("PATH=")), DEFAULT_PATH)
        candidates = [os.path.join(d or ".", name) for d in path.split(":")]
    for c in candidates:
        try:
            st = os.stat(c)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(c, os.X_OK):
            return c
    where = "not found" if "/" in name else "not found in $PATH"
    raise InitFailure(proto.INVALID_SPEC, f"executable {name!r} {where} in the container", f"{field_name}[0]")


def _join_userns(fd: int) -> None:
    """Enter the pod's user namespace (needs CAP_SYS_ADMIN over it: its owner, host root, has that). The
    credentials keep host uid 0, which is unmapped there, until process_security switches to the
    container's user, which maps to the pod's host range."""
    if fd < 0:
        return
    try:
        sc.setns(fd, sc.CLONE_NEWUSER)
    except OSError as e:
        raise InitFailure(proto.FAILURE, f"cannot join the pod's user namespace: {e.strerror}",
                          "linux.namespaces") from None
    os.close(fd)


def _exec(p: ProcessPlan, security: PreparedSecurity, path: str, userns_fd: int = -1) -> NoReturn:
    env = dict(e.split("=", 1) for e in p.env)
    _join_userns(userns_fd)
    # Last step before execve: every fd above 2 close-on-exec, cwd check, umask, user, capabilities,
    # no_new_privs and seccomp (runtime.linux.process_security, in runc's order).
    _step(lambda: process_security.apply(security), "process", "cannot apply the process security settings")
    try:
        os.execve(path, list(p.args), env)
    except OSError as e:
        raise InitFailure(proto.INVALID_SPEC, f"cannot run {p.args[0]!r}: {e.strerror}", "process.args[0]") \
            from None


# ---------------------------------------------------------------- reporting


def _step(action: Callable[[], object], field_name: str, what: str) -> None:
    try:
        action()
    except (MountError, SpecError, InitFailure):
        raise
    except OSError as e:
        detail = e.strerror if e.strerror and not e.args[1:] else (e.args[1] if len(e.args) > 1 else str(e))
        raise InitFailure(proto.FAILURE, f"{what}: {detail}", field_name) from None


def error_of(e: BaseException) -> tuple[str, str, str | None]:
    """(kind, message, field) of a setup failure, as CreateContainer reports it."""
    if isinstance(e, InitFailure):
        return e.kind, e.message, e.field
    if isinstance(e, SpecError):
        return proto.UNSUPPORTED if e.unsupported else proto.INVALID_SPEC, e.message, e.field
    if isinstance(e, MountError):
        return proto.INVALID_SPEC, e.message, e.field
    if isinstance(e, base.InvalidSpec):
        return proto.INVALID_SPEC, e.message.removeprefix(f"{e.field}: "), e.field
    if isinstance(e, base.Unsupported):
        return proto.UNSUPPORTED, e.message, None
    if isinstance(e, base.RuntimeFailure):
        return proto.FAILURE, e.message, None
    return proto.FAILURE, f"container setup failed: {type(e).__name__}: {e}", None


def _report_and_exit(chan: socket.socket, e: BaseException) -> NoReturn:
    if isinstance(e, SystemExit):
        os._exit(0)
    try:
        proto.send(chan, {"error": proto.error(*error_of(e))["error"]})
    except OSError:
        pass  # the shim is gone; nobody is left to tell
    os._exit(126)
