"""The few Linux system calls Python 3.11 does not wrap, through ctypes.

mount/umount2/pivot_root/unshare/setns/openat2/close_range/prctl. Every
wrapper raises OSError with errno and a short description of the call, so a
failure deep inside a container's setup still says what was attempted.
Namespace calls affect only the calling thread (the shim is single-threaded).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct
import threading
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# The same libc, but the call keeps the GIL: a clone3 child must come back into an interpreter whose lock
# its only thread holds, exactly as after fork().
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long

# x86_64 syscall numbers (identical on arm64 for the generic ones below via libc wrappers).
_SYS_PIVOT_ROOT = 155
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000
_SYS_CLOSE_RANGE = 436
_SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# OCI namespace type -> clone flag, and the /proc/<pid>/ns/<name> file of each.
NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS, "cgroup": CLONE_NEWCGROUP, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER, "pid": CLONE_NEWPID, "network": CLONE_NEWNET,
}
NAMESPACE_PROC_NAMES = {
    "mount": "mnt", "cgroup": "cgroup", "uts": "uts", "ipc": "ipc", "user": "user",
    "pid": "pid", "network": "net",
}

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

CLOSE_RANGE_CLOEXEC = 1 << 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

TIOCSCTTY = 0x540E
TIOCGPTPEER = 0x5441
TIOCSWINSZ = 0x5414
TIOCSPTLCK = 0x40045431


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {source or ''} on {target} ({fstype or 'no type'}, flags {flags:#x}, {data or ''})")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), f"pivot_root {new_root}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare {flags:#x}")


class IdMapRefused(OSError):
    """The kernel refused a uid_map/gid_map write; `map_name` says which."""

    def __init__(self, map_name: str, text: str, strerror: str) -> None:
        super().__init__(f"the kernel refused {map_name} {text.strip()!r}: {strerror}")
        self.map_name = map_name


@contextlib.contextmanager
def unshared_child(flags: int, id_maps: dict[str, str]) -> Iterator[int]:
    """A short-lived child that unshares `flags` (CLONE_NEWUSER among them) and waits, with its uid_map/gid_map
    (`{"uid_map": "0 100000 65536\\n", ...}`) written by this process; yields the child's pid, so the caller can
    bind-mount /proc/<pid>/ns/*, and reaps the child afterwards.

    Why a child: a process cannot step back out of a user namespace, and the maps are written from outside by
    host root so that setgroups stays allowed. Raises OSError when the unshare fails, IdMapRefused for a map."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            unshare(flags)
            os.write(ready_w, b"u")
            os.read(done_r, 1)   # EOF when the parent is done (or gone)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError(f"unshare {flags:#x} failed (is user.max_user_namespaces 0?)")
        for name, text in id_maps.items():
            try:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(text)
            except OSError as e:
                raise IdMapRefused(name, text, e.strerror or str(e)) from None
        yield pid
    finally:
        os.close(ready_r)
        os.close(done_w)   # the child exits on EOF
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass   # a subreaper's own reaping loop got it first


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


def _clone3(args: _CloneArgs) -> int:
    return int(_libc_gil.syscall(_SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))))


def can_fork_into_cgroup() -> bool:
    """Whether the kernel has clone3 with CLONE_INTO_CGROUP (5.7+). Probed with a cgroup fd that cannot be
    open: a kernel that knows the flag fails with EBADF before any process is made; older ones say ENOSYS,
    E2BIG or EINVAL."""
    if _clone3(_CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=2**31 - 1)) == 0:
        os._exit(0)  # cannot happen (the fd is invalid); if it ever does, the child must not run on
    return ctypes.get_errno() == errno.EBADF


def fork(cgroup_dir_fd: int = -1) -> int:
    """os.fork(), for a single-threaded caller without the interpreter's fork protocol, and with
    `cgroup_dir_fd` straight into that cgroup v2 directory.

    The protocol (PyOS_BeforeFork / PyOS_AfterFork_*) repairs locks that other threads held at the fork and
    runs the at-fork hooks of threading, random and logging. In a forked interpreter every page written is
    a copy-on-write fault and stays unshared: the protocol costs a container's init ~230 faults (~0.7 ms)
    and each pod shim ~0.3 MiB, and protects nothing while no other thread exists. With more threads it runs
    as in os.fork. glibc's own atfork handlers and its cached thread id are not refreshed either, as in any
    raw clone: nothing here takes a lock another thread could hold, and `random`'s state is the parent's
    (secrets and tempfile do not use it).

    Why the cgroup: moving a process after fork (writing its pid to cgroup.procs) takes the kernel's global
    cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period: 5-15 ms on every container
    start on a small VM. clone3(CLONE_INTO_CGROUP) places the child while it is made and waits for nothing.
    """
    if cgroup_dir_fd >= 0:
        args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_dir_fd)
    else:
        args = _CloneArgs(exit_signal=signal.SIGCHLD)
    api = ctypes.pythonapi
    with_protocol = threading.active_count() > 1
    if with_protocol:
        api.PyOS_BeforeFork()
    pid = _clone3(args)
    err = ctypes.get_errno()
    if with_protocol:
        (api.PyOS_AfterFork_Child if pid == 0 else api.PyOS_AfterFork_Parent)()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid


MADV_MERGEABLE = 12


def mark_mergeable() -> int:
    """madvise(MADV_MERGEABLE) on every private writable mapping of this process; the bytes marked.

    Why the mappings and not prctl(PR_SET_MEMORY_MERGE): that flag survives execve, so the containers a shim
    starts would be mergeable too (a cross-container side channel); mapping flags die with the address
    space at execve. A kernel without KSM refuses every call (0 bytes)."""
    marked = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            perms, name = fields[1], (fields[5] if len(fields) > 5 else "")
            if perms[1] != "w" or perms[3] != "p" or name in ("[stack]", "[vvar]", "[vdso]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_MERGEABLE) == 0:
                marked += end - start
    return marked


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns {nstype:#x}")


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` under `dirfd` with RESOLVE_* rules (O_CLOEXEC always added)."""
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    return _check(_libc.syscall(_SYS_OPENAT2, dirfd, _b(path), buf, ctypes.c_size_t(len(how))),
                  f"open {path}")


def make_mount_tree_readonly(fd: int) -> None:
    """mount_setattr(2) MOUNT_ATTR_RDONLY on the mount at `fd` and every mount below it (recursive read-only)."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)   # struct mount_attr: set, clr, propagation, userns
    buf = ctypes.create_string_buffer(attr, len(attr))
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), buf,
                         ctypes.c_size_t(len(attr))), "mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE)")


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached copy of the mount at `path` (not recursive) whose ids are shifted by the user namespace
    `userns_fd` (open_tree + mount_setattr MOUNT_ATTR_IDMAP): files owned by 0 on disk show as that
    namespace's root, and what its root creates is stored as 0. Attach it with `attach_mount`."""
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, ctypes.c_int(-100), _b(path),
                              ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)), f"open_tree {path}")
    attr = struct.pack("QQQQ", MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    buf = ctypes.create_string_buffer(attr, len(attr))
    try:
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", ctypes.c_uint(AT_EMPTY_PATH), buf,
                             ctypes.c_size_t(len(attr))), f"mount_setattr(MOUNT_ATTR_IDMAP) on {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach_mount(tree_fd: int, target_fd: int, what: str) -> None:
    """move_mount(2) the detached mount `tree_fd` onto the object `target_fd` (an O_PATH handle: no path walk)."""
    _check(_libc.syscall(_SYS_MOVE_MOUNT, tree_fd, b"", target_fd, b"",
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)), f"move_mount onto {what}")


def close_range(first: int, last: int) -> None:
    """Close every fd in [first, last] with one system call."""
    _check(_libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)),
           "close_range")


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= first close-on-exec (so exec drops them while error pipes stay usable until then)."""
    _check(_libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                         ctypes.c_uint(CLOSE_RANGE_CLOEXEC)), "close_range")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           f"prctl {option}")


def set_process_name(name: str) -> None:
    """The name ps and top show (15 bytes at most). Written to /proc/self/comm: a ctypes prctl costs a
    freshly forked shim ~130 KiB more of unshared pages."""
    fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, name.encode()[:15])
    finally:
        os.close(fd)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)
