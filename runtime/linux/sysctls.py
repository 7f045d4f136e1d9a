"""Pod sysctls: which keys a container may set, checked values, and writing them safely.

Only sysctls that live in a namespace the pod owns are allowed, so that a pod
can never change the host (runc's rules, which kubelet's "namespaced" list
mirrors):
- `net.*` — network namespace: refused when the pod uses the host network;
- `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` — IPC namespace:
  refused with the host IPC namespace;
- `kernel.domainname` — UTS namespace (`kernel.hostname` is refused: the
  hostname comes from the pod spec).
Keys may use dots or slashes as separators (kubelet accepts both, e.g.
`net/ipv4/conf/eth0.100/forwarding`). Values may not contain '+', '=', a
newline or NUL: CRI-O's CVE-2022-0811 turned "a=b+kernel.core_pattern=|cmd"
into a second host sysctl.

`write_sysctls` is what the container init calls, inside the pod's
namespaces and after its /proc is mounted: it opens each file relative to a
/proc/sys directory fd that is checked to be procfs, never following a symlink.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.base import InvalidSpec
from runtime.linux import libc_calls

PROC_SUPER_MAGIC = 0x9FA0
MAX_VALUE_LEN = 4096
_KEY_CHARS = re.compile(r"[A-Za-z0-9_.\-/]+")
_FORBIDDEN_IN_VALUE = ("+", "=", "\n", "\r", "\0")
_IPC_EXACT = frozenset({"kernel.sem"})
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")


@dataclass(frozen=True)
class Namespaces:
    """Which namespaces the pod has of its own (True) rather than the host's (False)."""

    net: bool
    ipc: bool
    uts: bool = True


def split_key(key: str, field_name: str) -> tuple[str, ...]:
    """The /proc/sys path components of a sysctl key, validated."""
    if not key or len(key) > 255 or not _KEY_CHARS.fullmatch(key):
        raise InvalidSpec(field_name, f"invalid sysctl name {key!r}")
    parts = tuple(key.split("/") if "/" in key else key.split("."))
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidSpec(field_name, f"invalid sysctl name {key!r}")
    return parts


def _dotted(parts: tuple[str, ...]) -> str:
    # Only for classifying: interface names may contain dots, which doesn't matter for the prefix.
    return ".".join(parts)


def check_sysctl(key: str, value: str, ns: Namespaces, field_name: str = "sysctls") -> tuple[str, ...]:
    """Validate one sysctl for a pod with namespaces `ns`; returns its /proc/sys path components."""
    where = f"{field_name}[{key!r}]"
    parts = split_key(key, where)
    if not isinstance(value, str) or len(value) > MAX_VALUE_LEN:
        raise InvalidSpec(where, "value must be a string of at most 4096 characters")
    bad = [c for c in _FORBIDDEN_IN_VALUE if c in value]
    if bad:
        raise InvalidSpec(where, f"value {value!r} contains forbidden character(s) {bad!r}")
    name = _dotted(parts)
    if parts[0] == "net":
        if not ns.net:
            raise InvalidSpec(where, "net.* sysctls are not allowed with the host network namespace")
    elif name in _IPC_EXACT or name.startswith(_IPC_PREFIXES):
        if not ns.ipc:
            raise InvalidSpec(where, "IPC sysctls are not allowed with the host IPC namespace")
    elif name == "kernel.domainname":
        if not ns.uts:
            raise InvalidSpec(where, "kernel.domainname is not allowed with the host UTS namespace")
    elif name == "kernel.hostname":
        raise InvalidSpec(where, "set the hostname through the pod's hostname, not a sysctl")
    else:
        raise InvalidSpec(where, "not a namespaced sysctl; only net.*, kernel.shm*, kernel.msg*, "
                                 "kernel.sem, fs.mqueue.* and kernel.domainname can be set for a pod")
    return parts


def check_sysctls(sysctls: Mapping[str, str], ns: Namespaces,
                  field_name: str = "sysctls") -> tuple[tuple[tuple[str, ...], str], ...]:
    """Validate every sysctl; returns (path components, value) pairs in a stable order for the child."""
    if not isinstance(sysctls, Mapping):
        raise InvalidSpec(field_name, "must be a map of name to value")
    return tuple((check_sysctl(k, v, ns, field_name), v) for k, v in sorted(sysctls.items()))


def write_sysctls(prepared: tuple[tuple[tuple[str, ...], str], ...], proc_sys: str = "/proc/sys") -> None:
    """Write validated sysctls (child side): each file opened below a procfs /proc/sys, no symlinks."""
    if not prepared:
        return
    root = os.open(proc_sys, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if libc_calls.fs_type(root) != PROC_SUPER_MAGIC:
            raise OSError(errno.EXDEV, f"{proc_sys} is not procfs; refusing to write sysctls")
        for parts, value in prepared:
            _write_one(root, parts, value)
    finally:
        os.close(root)


def _write_one(root: int, parts: tuple[str, ...], value: str) -> None:
    path = "/".join(parts)
    resolve = libc_calls.RESOLVE_BENEATH | libc_calls.RESOLVE_NO_SYMLINKS | libc_calls.RESOLVE_NO_XDEV
    try:
        fd = libc_calls.openat2(root, path, os.O_WRONLY | os.O_NOCTTY, resolve)
    except OSError as e:
        raise OSError(e.errno, f"sysctl {'.'.join(parts)}: {e.strerror}") from None
    try:
        data = value.encode()
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.EIO, f"sysctl {'.'.join(parts)}: short write")
    except OSError as e:
        if e.errno == errno.EIO:
            raise
        raise OSError(e.errno, f"sysctl {'.'.join(parts)}={value!r}: {e.strerror}") from None
    finally:
        os.close(fd)
