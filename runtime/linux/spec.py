"""Read a bundle's OCI spec into the plain plans the container init executes.

Everything a spec can get wrong is found here, in the shim, before anything is
forked or mounted: each problem raises `SpecError(field, message)` naming the
spec field (`process.args`, `mounts[3].source`, `linux.namespaces[1].path`),
which the backend turns into `InvalidSpec` / `Unsupported` for the caller.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.linux import syscalls as sc

MAX_ID = 2**32 - 2  # (uid_t)-1 is "no change"; anything above wraps (CVE-2024-40635)

# Mount options: flag set, flag cleared; propagation; anything else goes to the filesystem as data.
_SET_FLAGS = {
    "ro": sc.MS_RDONLY, "nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC,
    "sync": sc.MS_SYNCHRONOUS, "dirsync": sc.MS_DIRSYNC, "mand": sc.MS_MANDLOCK, "noatime": sc.MS_NOATIME,
    "nodiratime": sc.MS_NODIRATIME, "relatime": sc.MS_RELATIME, "strictatime": sc.MS_STRICTATIME,
    "nosymfollow": sc.MS_NOSYMFOLLOW,
}
_CLEAR_FLAGS = {"rw", "suid", "dev", "exec", "async", "nomand", "atime", "diratime", "norelatime",
                "nostrictatime", "defaults"}
_PROPAGATION = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
_ROOTFS_PROPAGATION = {
    "": sc.MS_SLAVE | sc.MS_REC, "rslave": sc.MS_SLAVE | sc.MS_REC, "slave": sc.MS_SLAVE,
    "rshared": sc.MS_SHARED | sc.MS_REC, "shared": sc.MS_SHARED,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC, "private": sc.MS_PRIVATE,
}
KNOWN_FS = {"bind", "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "none", "overlay"}
DEVICE_TYPES = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}


class SpecError(Exception):
    def __init__(self, field_name: str, message: str, unsupported: bool = False) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.unsupported = unsupported


@dataclass(frozen=True)
class ProcessPlan:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    umask: int | None
    terminal: bool
    rlimits: tuple[tuple[int, int, int], ...]
    no_new_privileges: bool
    oom_score_adj: int | None
    raw: Mapping[str, Any]           # the OCI process object (capabilities etc.) for process security


@dataclass(frozen=True)
class MountPlan:
    field: str                       # "mounts[3]" for error messages
    destination: str
    source: str
    type: str
    flags: int
    propagation: tuple[int, ...]
    data: str
    bind: bool
    recursive_readonly: bool = False   # "rro": the bind and every mount below it read-only
    idmap: bool = False                # bind through an idmapped mount of the container's user namespace


@dataclass(frozen=True)
class DevicePlan:
    path: str
    mode: int                        # file type bits | permissions
    major: int
    minor: int
    uid: int
    gid: int


@dataclass(frozen=True)
class ContainerPlan:
    root_path: str
    root_readonly: bool
    hostname: str
    mounts: tuple[MountPlan, ...]
    namespaces: Mapping[str, str]    # OCI type -> path ("" = new); an absent type = the host's
    cgroups_path: str
    resources: Mapping[str, Any] | None
    devices: tuple[DevicePlan, ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    sysctl: Mapping[str, str]
    rootfs_propagation: int
    seccomp: Mapping[str, Any] | None
    process: ProcessPlan
    # linux.uidMappings / gidMappings (container id, host id, size) of the user namespace being joined
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    gid_mappings: tuple[tuple[int, int, int], ...] = ()

    def host_root(self) -> tuple[int, int] | None:
        """Host uid and gid of the container's root in its user namespace (None: no user namespace)."""
        if "user" not in self.namespaces:
            return None
        return host_id(self.uid_mappings, 0), host_id(self.gid_mappings, 0)


def host_id(mappings: tuple[tuple[int, int, int], ...], container_id: int) -> int:
    for inside, outside, size in mappings:
        if inside <= container_id < inside + size:
            return outside + container_id - inside
    raise SpecError("linux.uidMappings", f"container id {container_id} is not mapped")


def read_spec(bundle: str) -> dict[str, Any]:
    """The bundle's config.json (runtime.oci writes it; read here without importing the builder)."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SpecError("bundle_dir", f"{path}: no OCI runtime spec in the bundle") from None
    except (OSError, ValueError) as e:
        raise SpecError("bundle_dir", f"{path}: cannot read the OCI runtime spec: {e}") from None
    if not isinstance(data, dict):
        raise SpecError("bundle_dir", f"{path}: the OCI runtime spec must be a JSON object")
    return data


@dataclass(frozen=True)
class ShimView:
    """The few fields the pod shim needs to make a container's parts (cgroup, PID namespace, terminal,
    rootfs directory). The rest is planned by runtime.linux.init.prepare just before the fork."""

    root_path: str
    cgroups_path: str
    resources: Mapping[str, Any] | None
    pid_namespace: str | None         # "" = a new one, a path = join it, None = the host's
    terminal: bool


def shim_view(spec: Mapping[str, Any], bundle: str) -> ShimView:
    linux = _obj(spec.get("linux"), "linux")
    root = _obj(spec.get("root"), "root")
    root_path = _str(root.get("path", "rootfs"), "root.path")
    pid_ns: str | None = None
    for i, ns in enumerate(_list(linux.get("namespaces", []), "linux.namespaces")):
        ns = _obj(ns, f"linux.namespaces[{i}]")
        if ns.get("type") == "pid":
            pid_ns = _str(ns.get("path", ""), f"linux.namespaces[{i}].path")
            if pid_ns:
                _check_ns_path(pid_ns, "pid", f"linux.namespaces[{i}].path")
    return ShimView(root_path=root_path if os.path.isabs(root_path) else os.path.join(bundle, root_path),
                    cgroups_path=_str(linux.get("cgroupsPath", ""), "linux.cgroupsPath"),
                    resources=_obj(linux.get("resources"), "linux.resources") or None,
                    pid_namespace=pid_ns,
                    terminal=bool(_obj(spec.get("process"), "process").get("terminal", False)))


def container_plan(spec: Mapping[str, Any], bundle: str) -> ContainerPlan:
    linux = _obj(spec.get("linux"), "linux")
    if "process" not in spec:
        raise SpecError("process", "missing")
    root = _obj(spec.get("root"), "root")
    root_path = _str(root.get("path", "rootfs"), "root.path")
    if not os.path.isabs(root_path):
        root_path = os.path.join(bundle, root_path)
    namespaces = _namespaces(linux.get("namespaces", []))
    hostname = _str(spec.get("hostname", ""), "hostname")
    if hostname and "uts" not in namespaces:
        raise SpecError("hostname", "cannot set the hostname without a UTS namespace (linux.namespaces)")
    propagation = _str(linux.get("rootfsPropagation", ""), "linux.rootfsPropagation")
    if propagation not in _ROOTFS_PROPAGATION:
        raise SpecError("linux.rootfsPropagation", f"unknown propagation {propagation!r}")
    uid_maps = id_mappings(linux.get("uidMappings", []), "linux.uidMappings")
    gid_maps = id_mappings(linux.get("gidMappings", []), "linux.gidMappings")
    if "user" in namespaces:
        if not namespaces["user"]:
            raise SpecError("linux.namespaces", "a new user namespace per container is not supported: join the "
                            "pod's (type \"user\" with a path)", unsupported=True)
        if not uid_maps or not gid_maps:
            raise SpecError("linux.uidMappings", "a user namespace needs linux.uidMappings and linux.gidMappings")
        host_id(uid_maps, 0)
        try:
            host_id(gid_maps, 0)
        except SpecError:
            raise SpecError("linux.gidMappings", "container id 0 is not mapped") from None
        if _ROOTFS_PROPAGATION[propagation] & sc.MS_SHARED:
            raise SpecError("linux.rootfsPropagation", "a shared root cannot be used with a user namespace "
                            "(the idmapped image layers would propagate to the host)")
    elif uid_maps or gid_maps:
        raise SpecError("linux.uidMappings", "id mappings need a user namespace in linux.namespaces")
    return ContainerPlan(
        root_path=root_path,
        root_readonly=bool(root.get("readonly", False)),
        hostname=hostname,
        mounts=tuple(mount_plan(m, i) for i, m in enumerate(_list(spec.get("mounts", []), "mounts"))),
        namespaces=namespaces,
        cgroups_path=_str(linux.get("cgroupsPath", ""), "linux.cgroupsPath"),
        resources=_obj(linux.get("resources"), "linux.resources") or None,
        devices=tuple(_device(d, i) for i, d in enumerate(_list(linux.get("devices", []), "linux.devices"))),
        masked_paths=tuple(_abs_path(p, f"linux.maskedPaths[{i}]")
                           for i, p in enumerate(_list(linux.get("maskedPaths", []), "linux.maskedPaths"))),
        readonly_paths=tuple(_abs_path(p, f"linux.readonlyPaths[{i}]")
                             for i, p in enumerate(_list(linux.get("readonlyPaths", []), "linux.readonlyPaths"))),
        sysctl=_sysctls(linux.get("sysctl", {})),
        rootfs_propagation=_ROOTFS_PROPAGATION[propagation],
        seccomp=_obj(linux.get("seccomp"), "linux.seccomp") or None,
        process=process_plan(_obj(spec["process"], "process"), "process"),
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
    )


def id_mappings(raw: Any, where: str) -> tuple[tuple[int, int, int], ...]:
    out = []
    for i, m in enumerate(_list(raw, where)):
        m = _obj(m, f"{where}[{i}]")
        inside, outside = _id(m.get("containerID"), f"{where}[{i}].containerID"), \
            _id(m.get("hostID"), f"{where}[{i}].hostID")
        size = _id(m.get("size"), f"{where}[{i}].size")
        if size == 0 or outside + size > 1 << 32 or inside + size > 1 << 32:
            raise SpecError(f"{where}[{i}]", f"size {size} from {inside}/{outside} is empty or past 2^32")
        out.append((inside, outside, size))
    return tuple(out)


def process_plan(p: Mapping[str, Any], where: str) -> ProcessPlan:
    args = tuple(_str(a, f"{where}.args[{i}]") for i, a in enumerate(_list(p.get("args", []), f"{where}.args")))
    if not args or not args[0]:
        raise SpecError(f"{where}.args", "no command to run (the image has no entrypoint and none was given)")
    env = tuple(_str(e, f"{where}.env[{i}]") for i, e in enumerate(_list(p.get("env", []), f"{where}.env")))
    for i, e in enumerate(env):
        if "=" not in e or e.startswith("="):
            raise SpecError(f"{where}.env[{i}]", f"{e!r} is not NAME=value")
    for i, a in enumerate(args + env):
        if "\0" in a:
            raise SpecError(f"{where}.args" if i < len(args) else f"{where}.env", "contains a NUL byte")
    cwd = _str(p.get("cwd", "/"), f"{where}.cwd") or "/"
    if not cwd.startswith("/"):
        raise SpecError(f"{where}.cwd", f"{cwd!r} must be an absolute path")
    user = _obj(p.get("user"), f"{where}.user")
    oom = p.get("oomScoreAdj")
    if oom is not None and (not isinstance(oom, int) or not -1000 <= oom <= 1000):
        raise SpecError(f"{where}.oomScoreAdj", f"{oom!r} is not an integer in [-1000, 1000]")
    umask = user.get("umask")
    return ProcessPlan(
        args=args, env=env, cwd=cwd,
        uid=_id(user.get("uid", 0), f"{where}.user.uid"),
        gid=_id(user.get("gid", 0), f"{where}.user.gid"),
        additional_gids=tuple(_id(g, f"{where}.user.additionalGids[{i}]")
                              for i, g in enumerate(_list(user.get("additionalGids", []),
                                                          f"{where}.user.additionalGids"))),
        umask=None if umask is None else _id(umask, f"{where}.user.umask") & 0o777,
        terminal=bool(p.get("terminal", False)),
        rlimits=tuple(_rlimit(r, f"{where}.rlimits[{i}]")
                      for i, r in enumerate(_list(p.get("rlimits", []), f"{where}.rlimits"))),
        no_new_privileges=bool(p.get("noNewPrivileges", False)),
        oom_score_adj=oom,
        raw=p,
    )


def mount_plan(m: Any, i: int) -> MountPlan:
    where = f"mounts[{i}]"
    m = _obj(m, where)
    dest = _abs_path(m.get("destination"), f"{where}.destination")
    source = _str(m.get("source", ""), f"{where}.source")
    fstype = _str(m.get("type", ""), f"{where}.type") or "none"
    options = [_str(o, f"{where}.options") for o in _list(m.get("options", []), f"{where}.options")]
    flags, propagation, data = 0, [], []
    bind = fstype == "bind"
    rro = idmap = False
    if m.get("uidMappings") or m.get("gidMappings"):
        raise SpecError(f"{where}.uidMappings", "per-mount id mappings are not supported: use the \"idmap\" "
                        "option (the container's user namespace)", unsupported=True)
    for opt in options:
        if opt in ("bind", "rbind"):
            bind = True
            flags |= sc.MS_BIND | (sc.MS_REC if opt == "rbind" else 0)
        elif opt in _SET_FLAGS:
            flags |= _SET_FLAGS[opt]
        elif opt in _CLEAR_FLAGS:
            continue
        elif opt in _PROPAGATION:
            propagation.append(_PROPAGATION[opt])
        elif opt == "rro":
            rro = True
        elif opt == "idmap":
            idmap = True
        elif opt in ("rrw", "ridmap"):
            raise SpecError(f"{where}.options", f"option {opt!r} is not supported by this runtime", unsupported=True)
        else:
            data.append(opt)
    if bind:
        flags |= sc.MS_BIND
        if not source.startswith("/"):
            raise SpecError(f"{where}.source", f"bind mount source {source!r} must be an absolute host path")
        if not os.path.exists(source):
            raise SpecError(f"{where}.source", f"{source} does not exist on the host")
        if data:
            raise SpecError(f"{where}.options", f"unknown bind mount options {data}")
    elif rro or idmap:
        raise SpecError(f"{where}.options", f"{'rro' if rro else 'idmap'} applies to bind mounts only")
    elif fstype not in KNOWN_FS:
        raise SpecError(f"{where}.type", f"unsupported filesystem type {fstype!r}", unsupported=True)
    return MountPlan(field=where, destination=dest, source=source, type="bind" if bind else fstype,
                     flags=flags, propagation=tuple(propagation), data=",".join(data), bind=bind,
                     recursive_readonly=rro, idmap=idmap)


def _namespaces(raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, ns in enumerate(_list(raw, "linux.namespaces")):
        where = f"linux.namespaces[{i}]"
        ns = _obj(ns, where)
        kind = _str(ns.get("type"), f"{where}.type")
        if kind not in sc.NAMESPACE_FLAGS:
            raise SpecError(f"{where}.type", f"unknown namespace type {kind!r}")
        if kind in out:
            raise SpecError(f"{where}.type", f"namespace {kind!r} listed twice")
        path = _str(ns.get("path", ""), f"{where}.path")
        if path:
            _check_ns_path(path, kind, f"{where}.path")
        out[kind] = path
    if "mount" not in out or out["mount"]:
        raise SpecError("linux.namespaces", "a new mount namespace (type \"mount\" without a path) is required")
    return out


def _check_ns_path(path: str, kind: str, where: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError(where, f"cannot open namespace {path}: {e.strerror}") from None
    try:
        # NS_GET_NSTYPE (0xb703) returns the CLONE_NEW* flag of a namespace file; anything else is not one.
        nstype = fcntl.ioctl(fd, 0xB703)
    except OSError:
        raise SpecError(where, f"{path} is not a namespace file") from None
    finally:
        os.close(fd)
    if nstype != sc.NAMESPACE_FLAGS[kind]:
        raise SpecError(where, f"{path} is not a {kind} namespace")


def _device(d: Any, i: int) -> DevicePlan:
    where = f"linux.devices[{i}]"
    d = _obj(d, where)
    kind = _str(d.get("type"), f"{where}.type")
    if kind not in DEVICE_TYPES:
        raise SpecError(f"{where}.type", f"unknown device type {kind!r}")
    mode = d.get("fileMode", 0o666)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise SpecError(f"{where}.fileMode", f"{mode!r} is not a file mode")
    major, minor = d.get("major", 0), d.get("minor", 0)
    if not isinstance(major, int) or not isinstance(minor, int) or major < 0 or minor < 0:
        raise SpecError(where, "major and minor must be non-negative integers")
    path = _abs_path(d.get("path"), f"{where}.path")
    if not path.startswith("/dev/"):
        raise SpecError(f"{where}.path", f"{path} is not under /dev")
    return DevicePlan(path=path, mode=DEVICE_TYPES[kind] | mode, major=major, minor=minor,
                      uid=_id(d.get("uid", 0), f"{where}.uid"), gid=_id(d.get("gid", 0), f"{where}.gid"))


def _sysctls(raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _obj(raw, "linux.sysctl").items():
        where = f"linux.sysctl[{key}]"
        check_sysctl(key, _str(value, where), where)
        out[key] = value
    return out


# Namespaced sysctl prefixes (runc's validation): anything else would change the host.
_NAMESPACED_SYSCTLS = ("net.", "kernel.shm", "kernel.msg", "fs.mqueue.")
_NAMESPACED_EXACT = ("kernel.sem", "kernel.shm_rmid_forced", "kernel.hostname", "kernel.domainname")


def check_sysctl(key: str, value: str, where: str) -> None:
    """Format and namespacing (CVE-2022-0811): no injection, only namespaced keys."""
    if not key or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789_.-/" for c in key.lower()) \
            or ".." in key or key.startswith((".", "/")):
        raise SpecError(where, f"{key!r} is not a sysctl name")
    # A value is written to one /proc/sys file; "+", "=" and line breaks are how CVE-2022-0811 smuggled a
    # second key into a helper's arguments, so they are refused here too.
    if any(c in value for c in "\n\r\0+="):
        raise SpecError(where, f"value {value!r} contains a forbidden character")
    name = key.replace("/", ".")
    if not (name.startswith(_NAMESPACED_SYSCTLS) or name in _NAMESPACED_EXACT):
        raise SpecError(where, f"{key} is not a namespaced sysctl (it would change the host)")


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key


def _rlimit(r: Any, where: str) -> tuple[int, int, int]:
    r = _obj(r, where)
    name = _str(r.get("type"), f"{where}.type")
    res = getattr(resource, name, None)
    if not name.startswith("RLIMIT_") or not isinstance(res, int):
        raise SpecError(f"{where}.type", f"unknown rlimit {name!r}")
    soft, hard = r.get("soft"), r.get("hard")
    if not isinstance(soft, int) or not isinstance(hard, int) or soft < 0 or hard < 0:
        raise SpecError(where, "soft and hard must be non-negative integers")
    if soft > hard:
        raise SpecError(where, f"soft limit {soft} is above the hard limit {hard}")
    return res, soft, hard


def _id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise SpecError(where, f"{value!r} is not a valid id (0..{MAX_ID})")
    return value


def _abs_path(value: Any, where: str) -> str:
    path = _str(value, where)
    if not path.startswith("/"):
        raise SpecError(where, f"{path!r} must be an absolute path")
    if "\0" in path:
        raise SpecError(where, "contains a NUL byte")
    return os.path.normpath(path)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(where, f"expected a string, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(where, f"expected a list, got {type(value).__name__}")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(where, f"expected an object, got {type(value).__name__}")
    return value
