"""The security state of a container process: validated in the parent, applied in the child.

Two calls:

    prepared = prepare(spec, rootfs=None)      # parent: validate + compile; raises InvalidSpec/Unsupported
    ...fork, namespaces, mounts, write_sysctls(prepared.sysctls), mask_paths(...), chdir...
    apply(prepared)                             # child: the last step before execve

`prepare` does everything that can fail for a reason the user can fix
(ids out of range, unknown capabilities, a bad seccomp profile, a
non-namespaced sysctl, an AppArmor/SELinux label this host cannot apply),
so a bad spec fails CreateContainer with a message naming the field rather
than killing a half-made container. It also compiles the seccomp filter to
BPF, so the child needs no libseccomp.

`apply` makes only syscalls (ctypes into libc, no threads, no imports), so it
is safe in a forked child of a single-threaded process. Its order is runc's
(libcontainer/init_linux.go finalizeNamespace + standard_init_linux.go):

 0. every fd but stdio (and `keep_fds`) becomes close-on-exec, and the
    working directory must be reachable from the container's root: a leaked
    host directory fd or a cwd left outside the root let a container walk
    the host filesystem (CVE-2024-21626);
 1. umask;
 2. seccomp, if no_new_privs is off: loading a filter without no_new_privs
    needs CAP_SYS_ADMIN, which is about to be dropped;
 3. drop the bounding set (needs CAP_SETPCAP, still effective as root);
 4. PR_SET_KEEPCAPS, then setgroups, setresgid, setresuid: keepcaps keeps
    the permitted set across the switch away from uid 0;
 5. clear keepcaps, capset effective/permitted/inheritable;
 6. raise the ambient set;
 7. no_new_privs;
 8. seccomp, if no_new_privs is on: as late as possible, so the filter
    constrains nothing but the execve and the program.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.base import InvalidSpec, Unsupported
from runtime.linux import capabilities, libc_calls, seccomp, sysctls, users


@dataclass(frozen=True)
class PreparedSecurity:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    caps: capabilities.CapabilitySets
    no_new_privs: bool
    seccomp: seccomp.CompiledFilter | None
    umask: int | None
    # For the container init to use at the right moments (not by `apply`):
    sysctls: tuple[tuple[tuple[str, ...], str], ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()


def _namespaces(linux: Mapping[str, Any]) -> sysctls.Namespaces:
    kinds = {ns.get("type") for ns in linux.get("namespaces") or [] if isinstance(ns, dict)}
    return sysctls.Namespaces(net="network" in kinds, ipc="ipc" in kinds, uts="uts" in kinds)


def _paths(value: Any, field_name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InvalidSpec(field_name, "must be a list of absolute paths")
    for p in value:
        if not p.startswith("/") or p == "/" or "\0" in p or any(c == ".." for c in p.split("/")):
            raise InvalidSpec(field_name, f"{p!r} must be an absolute path below / without '..'")
    return tuple(value)


def _check_lsm(process: Mapping[str, Any], linux: Mapping[str, Any]) -> None:
    # This host has neither AppArmor nor SELinux: an explicit profile or label cannot be honoured,
    # and ignoring it would be silently weaker than asked (containerd refuses too).
    if process.get("apparmorProfile"):
        raise Unsupported("process.apparmorProfile: apparmor is not supported on this host")
    if process.get("selinuxLabel") or linux.get("mountLabel"):
        raise Unsupported("process.selinuxLabel: selinux is not enabled on this host")


def prepare_process(process: Mapping[str, Any], seccomp_profile: Mapping[str, Any] | None,
                    field_prefix: str = "process",
                    cache: seccomp.FilterCache | None = None) -> PreparedSecurity:
    """Validate an OCI `process` (a container's, or an exec's) with the container's seccomp profile."""
    if not isinstance(process, Mapping):
        raise InvalidSpec(field_prefix, "must be an object")
    uid, gid, groups = users.check_oci_user(process.get("user", {}), f"{field_prefix}.user")
    umask = process.get("user", {}).get("umask")
    if umask is not None and (not isinstance(umask, int) or isinstance(umask, bool) or not 0 <= umask <= 0o777):
        raise InvalidSpec(f"{field_prefix}.user.umask", f"must be 0..0o777, got {umask!r}")
    caps = capabilities.CapabilitySets.from_oci(process.get("capabilities"),
                                                field_prefix=f"{field_prefix}.capabilities")
    nnp = process.get("noNewPrivileges", False)
    if not isinstance(nnp, bool):
        raise InvalidSpec(f"{field_prefix}.noNewPrivileges", "must be true or false")
    if seccomp_profile is None:
        compiled = None
    elif cache is not None:
        compiled = cache.compile(seccomp_profile)
    else:
        compiled = seccomp.compile_profile(seccomp_profile)
    return PreparedSecurity(uid, gid, groups, caps, nnp, compiled, umask)


def prepare(spec: Mapping[str, Any], rootfs: str | Sequence[str] | None = None,
            user: users.UserRequest | None = None, cache: seccomp.FilterCache | None = None) -> PreparedSecurity:
    """Validate and compile the security parts of an OCI spec (parent side).

    With `user` and `rootfs` (a rootfs dir, or image layer dirs lowest
    first), the user is resolved in the image and replaces `process.user`;
    normally the spec builder has already done that with
    `users.resolve_user`, so the same config.json works for runc. `cache`
    (one per shim) saves recompiling a seccomp profile seen before.
    """
    process = spec.get("process")
    if not isinstance(process, Mapping):
        raise InvalidSpec("process", "is required")
    linux = spec.get("linux") or {}
    if not isinstance(linux, Mapping):
        raise InvalidSpec("linux", "must be an object")
    _check_lsm(process, linux)
    if user is not None:
        if rootfs is None:
            raise InvalidSpec("process.user", "resolving a user needs the rootfs")
        resolved = users.resolve_user(rootfs, user)
        process = {**process, "user": {**(process.get("user") or {}), **resolved.to_oci()}}
    base = prepare_process(process, linux.get("seccomp"), cache=cache)
    raw_sysctls = linux.get("sysctl") or {}
    checked = sysctls.check_sysctls(raw_sysctls, _namespaces(linux), "linux.sysctl")
    return PreparedSecurity(
        base.uid, base.gid, base.additional_gids, base.caps, base.no_new_privs, base.seccomp, base.umask,
        sysctls=checked,
        masked_paths=_paths(linux.get("maskedPaths"), "linux.maskedPaths"),
        readonly_paths=_paths(linux.get("readonlyPaths"), "linux.readonlyPaths"),
    )


def seal_fds(keep_fds: Sequence[int] = ()) -> None:
    """Mark every fd >= 3 close-on-exec except `keep_fds`, so nothing of the runtime reaches the program."""
    libc_calls.close_range_cloexec(3)
    for fd in keep_fds:
        os.set_inheritable(fd, True)


def check_cwd() -> None:
    """Fail if the working directory is not reachable from the process's root (it would be a host path)."""
    try:
        cwd = os.getcwd()  # glibc fails with ENOENT for the kernel's "(unreachable)/..." answer
    except FileNotFoundError:
        cwd = ""
    if not cwd.startswith("/"):
        raise OSError(errno.ENOENT, "the working directory is outside the container's root")


def set_dumpable(on: bool) -> None:
    """PR_SET_DUMPABLE: the container init should run non-dumpable until execve, so no process already
    in the container can open its /proc/<pid>/exe (the host binary: CVE-2019-5736) or ptrace it."""
    libc_calls.prctl(libc_calls.PR_SET_DUMPABLE, 1 if on else 0)


def apply(prepared: PreparedSecurity, keep_fds: Sequence[int] = ()) -> None:
    """Switch the calling (child) process to the prepared identity and confinement. Call last before execve.

    `keep_fds`: fds above 2 the program is meant to inherit (OCI LISTEN_FDS-style preserved fds).
    Raises OSError naming the step that failed; the caller reports it and exits.
    """
    caps = prepared.caps
    seal_fds(keep_fds)
    check_cwd()
    if prepared.umask is not None:
        os.umask(prepared.umask)
    if prepared.seccomp is not None and not prepared.no_new_privs:
        seccomp.load_filter(prepared.seccomp)
    capabilities.drop_bounding(caps.bounding, caps.last_cap)
    capabilities.set_keepcaps(True)
    _switch_user(prepared)
    capabilities.set_keepcaps(False)
    capabilities.set_process_caps(caps.effective, caps.permitted, caps.inheritable)
    capabilities.raise_ambient(caps.ambient, caps.last_cap)
    if prepared.no_new_privs:
        capabilities.set_no_new_privs()
    if prepared.seccomp is not None and prepared.no_new_privs:
        seccomp.load_filter(prepared.seccomp)


def _switch_user(prepared: PreparedSecurity) -> None:
    try:
        os.setgroups(list(prepared.additional_gids))
    except OSError as e:
        raise OSError(e.errno, f"setgroups({list(prepared.additional_gids)}): {e.strerror}") from None
    try:
        os.setresgid(prepared.gid, prepared.gid, prepared.gid)
    except OSError as e:
        raise OSError(e.errno, f"setresgid({prepared.gid}): {e.strerror}") from None
    try:
        os.setresuid(prepared.uid, prepared.uid, prepared.uid)
    except OSError as e:
        raise OSError(e.errno, f"setresuid({prepared.uid}): {e.strerror}") from None
