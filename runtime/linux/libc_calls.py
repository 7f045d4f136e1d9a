"""ctypes wrappers for the few syscalls the security code makes.

Python 3.11 has no os.prctl, os.capset, os.openat2, seccomp(2) or the new
mount API, so these go through libc. Everything here is safe to call in a
forked child of a single-threaded process: no threads, no imports at call
time, no locks (the libc handle is opened when this module is imported, in
the parent).

Syscall numbers come from the asm-generic table for everything added since
Linux 5.x (the same number on every architecture); the older calls differ per
architecture and are looked up in `_ARCH_SYSCALLS`.
"""

from __future__ import annotations

import ctypes
import os
import platform
from types import MappingProxyType

LIBC = ctypes.CDLL(None, use_errno=True)

# prctl(2) options.
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# openat2(2) resolve flags.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# The new mount API (open_tree, move_mount, fsopen, fsconfig, fsmount, mount_setattr).
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# seccomp(2).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_MODE_FILTER = 2

CLOSE_RANGE_CLOEXEC = 1 << 2

_GENERIC_SYSCALLS = MappingProxyType({
    "close_range": 436, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "openat2": 437, "mount_setattr": 442,
})
_ARCH_SYSCALLS = MappingProxyType({
    "x86_64": MappingProxyType({"seccomp": 317}),
    "aarch64": MappingProxyType({"seccomp": 277}),
    "riscv64": MappingProxyType({"seccomp": 277}),
    "s390x": MappingProxyType({"seccomp": 348}),
    "ppc64le": MappingProxyType({"seccomp": 358}),
})


def syscall_number(name: str, machine: str | None = None) -> int:
    """The number of syscall `name` on `machine` (default: this one). KeyError if unknown."""
    if name in _GENERIC_SYSCALLS:
        return _GENERIC_SYSCALLS[name]
    return _ARCH_SYSCALLS[machine or platform.machine()][name]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise _fail(what)
    return ret


_prctl = LIBC.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

_syscall = LIBC.syscall
_syscall.restype = ctypes.c_long


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def raw_syscall(nr: int, *args: object) -> int:
    """syscall(2); ints must already be ctypes values (variadic: a bare int would be 32 bits)."""
    return int(_syscall(ctypes.c_long(nr), *args))


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= `first` close-on-exec in one syscall (close_range(2), Linux 5.11)."""
    ret = raw_syscall(syscall_number("close_range"), ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                      ctypes.c_uint(CLOSE_RANGE_CLOEXEC))
    _check(ret, "close_range")


# ---------------------------------------------------------------- capabilities

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_capget = LIBC.capget
_capget.argtypes = [ctypes.POINTER(CapHeader), ctypes.POINTER(CapData)]
_capset = LIBC.capset
_capset.argtypes = [ctypes.POINTER(CapHeader), ctypes.POINTER(CapData)]


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread as 64-bit masks."""
    header = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    _check(_capget(ctypes.byref(header), data), "capget")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32,
            data[0].inheritable | data[1].inheritable << 32)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    low, high = 0xFFFFFFFF, 32
    data[0].effective, data[1].effective = effective & low, effective >> high
    data[0].permitted, data[1].permitted = permitted & low, permitted >> high
    data[0].inheritable, data[1].inheritable = inheritable & low, inheritable >> high
    _check(_capset(ctypes.byref(header), data), "capset")


# ---------------------------------------------------------------- seccomp


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(bpf: bytes, flags: int, nr: int) -> None:
    """Install a classic-BPF seccomp program (bytes of `struct sock_filter`)."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // ctypes.sizeof(SockFilter), ctypes.cast(buf, ctypes.c_void_p))
    ret = raw_syscall(nr, ctypes.c_long(SECCOMP_SET_MODE_FILTER), ctypes.c_long(flags), ctypes.byref(prog))
    _check(ret, "seccomp(SECCOMP_SET_MODE_FILTER)")


# ---------------------------------------------------------------- files and mounts


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` relative to `dirfd` with RESOLVE_* rules; returns the fd."""
    how = OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = raw_syscall(syscall_number("openat2"), ctypes.c_long(dirfd), ctypes.c_char_p(os.fsencode(path)),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(ret, f"openat2({path!r})")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    ret = raw_syscall(syscall_number("open_tree"), ctypes.c_long(dirfd),
                      ctypes.c_char_p(os.fsencode(path)), ctypes.c_uint(flags))
    return _check(ret, f"open_tree({path!r})")


def move_mount(from_fd: int, to_fd: int) -> None:
    """Attach the detached mount `from_fd` on top of the object `to_fd` (both by fd, no path walk)."""
    ret = raw_syscall(syscall_number("move_mount"), ctypes.c_long(from_fd), ctypes.c_char_p(b""),
                      ctypes.c_long(to_fd), ctypes.c_char_p(b""),
                      ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))
    _check(ret, "move_mount")


def mount_setattr(fd: int, attr_set: int, recursive: bool) -> None:
    attr = MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    ret = raw_syscall(syscall_number("mount_setattr"), ctypes.c_long(fd), ctypes.c_char_p(b""),
                      ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(ret, "mount_setattr")


def fsopen(fstype: str) -> int:
    ret = raw_syscall(syscall_number("fsopen"), ctypes.c_char_p(fstype.encode()), ctypes.c_uint(FSOPEN_CLOEXEC))
    return _check(ret, f"fsopen({fstype})")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    ret = raw_syscall(syscall_number("fsconfig"), ctypes.c_long(fd), ctypes.c_uint(cmd),
                      ctypes.c_char_p(key.encode() if key is not None else None),
                      ctypes.c_char_p(value.encode() if value is not None else None), ctypes.c_int(0))
    _check(ret, f"fsconfig({key})")


def fsmount(fd: int, attrs: int) -> int:
    ret = raw_syscall(syscall_number("fsmount"), ctypes.c_long(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                      ctypes.c_uint(attrs))
    return _check(ret, "fsmount")


_fstatfs = LIBC.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def fs_type(fd: int) -> int:
    """f_type of the filesystem holding `fd` (fstatfs(2)); the first word of struct statfs."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    _check(_fstatfs(fd, buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
