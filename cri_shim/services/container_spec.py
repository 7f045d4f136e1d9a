"""CreateContainer's translation: a CRI ContainerConfig + the image + the pod -> an OCI runtime spec.

Pure functions over plain inputs (plus reads of the host paths a mount or
device names), so every rule is unit-testable. The rules are containerd's
(`internal/cri/server/container_create_linux.go`, `pkg/oci`), except where a
comment says otherwise:

- command: `command` + `args`; without `command`, the image ENTRYPOINT plus
  `args`, or the image CMD when `args` is empty too;
- env: the image's, then the config's (same name replaces), HOSTNAME set,
  PATH defaulted; values are bytes (CRI 1.34+), decoded with surrogateescape
  so any byte but NUL reaches the process unchanged;
- working dir: the config's, else the image's, else "/";
- mounts: bind mounts of host paths (symlinks resolved, missing dirs
  created), propagation checked against the host mount it sits on;
  selinux_relabel is ignored (no SELinux on this host); recursive_read_only
  becomes the "rro" option (mount_setattr on the whole tree, read-only and
  private only); id-mapped mounts are refused; image volumes (Mount.image) are the image's layers, read-only (a
  bind of the one layer, or an overlay of several), optionally only a sub path;
- devices: host device nodes by path, with a device cgroup rule each;
- resources: CRI LinuxContainerResources -> OCI linux.resources;
- security: `runtime.linux.security_context.security_parts` (users resolved
  in the image layers, capabilities, seccomp, masked/read-only paths).
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument, Unimplemented
from runtime import base, oci

if TYPE_CHECKING:   # the Linux security modules are imported where a Linux spec is built (not on Windows)
    from runtime.linux import seccomp, users
    from runtime.linux.security_context import AppArmorType, SecurityContextRequest, SecurityParts

MAX_ENV_BYTES = 1 << 20
HOSTNAME_ENV = "HOSTNAME"
_PROPAGATION_OPTION = {
    pb.PROPAGATION_PRIVATE: "rprivate",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}
_ALLOWED_MOUNT_OPTIONS = ("noexec", "nodev", "nosuid", "nosymfollow", "noatime", "nodiratime", "relatime",
                          "strictatime")


@dataclass(frozen=True)
class ImageInfo:
    """What the translation needs from the image (cri_shim.images.store.ContainerImage has it all)."""

    layers: tuple[str, ...]          # overlay lowerdirs, lowest first
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""


@dataclass(frozen=True)
class PodInfo:
    """What the translation needs from the pod."""

    id: str
    hostname: str
    cgroup_parent: str
    namespaces: Mapping[str, str]    # from the backend: "net", "ipc", "uts", "pid" -> path
    config: pb.PodSandboxConfig


@dataclass(frozen=True)
class ImageVolume:
    """An image mounted as a volume (CRI Mount.image): its id and snapshot dirs, lowest first."""

    image_id: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class BuiltSpec:
    spec: dict[str, Any]
    user: users.ResolvedUser
    stop_signal: int
    resources: dict[str, Any]        # the CRI LinuxContainerResources as a dict (echoed by ContainerStatus)


# ---------------------------------------------------------------- process


def command_line(config: pb.ContainerConfig, image: ImageInfo) -> tuple[str, ...]:
    command, args = tuple(config.command), tuple(config.args)
    if not command:
        command = image.entrypoint
        if not args:
            args = image.cmd
    argv = command + args
    if not argv or not argv[0]:
        raise InvalidArgument("config.command: no command to run: the image has no ENTRYPOINT or CMD and "
                              "neither config.command nor config.args is set")
    for i, a in enumerate(argv):
        if "\0" in a:
            raise InvalidArgument(f"config.command/args[{i}]: contains a NUL byte")
    return argv


def _env_name(name: str, where: str) -> str:
    if not name or "=" in name or "\0" in name:
        raise InvalidArgument(f"{where}: {name!r} is not a valid environment variable name "
                              "(non-empty, no '=' or NUL)")
    return name


def environment(config: pb.ContainerConfig, image: ImageInfo, hostname: str) -> tuple[str, ...]:
    env: dict[str, str] = {}
    for item in image.env:
        name, _, value = item.partition("=")
        if name:
            env[name] = value
    env.setdefault("PATH", oci.DEFAULT_PATH_ENV.split("=", 1)[1])
    env[HOSTNAME_ENV] = hostname
    total = 0
    for i, kv in enumerate(config.envs):
        where = f"config.envs[{i}]"
        name = _env_name(kv.key, f"{where}.key")
        raw = bytes(kv.value)
        if b"\0" in raw:
            raise InvalidArgument(f"{where}.value: the value of {name} contains a NUL byte, which no process "
                                  "environment can carry")
        if name == "HOME" and (b"\n" in raw or b"\r" in raw):
            raise InvalidArgument(f"{where}.value: HOME cannot contain a line break")
        total += len(raw) + len(name)
        if total > MAX_ENV_BYTES:
            raise InvalidArgument(f"config.envs: the environment is larger than {MAX_ENV_BYTES} bytes")
        env[name] = raw.decode("utf-8", "surrogateescape")
    return tuple(f"{k}={v}" for k, v in env.items())


def working_dir(config: pb.ContainerConfig, image: ImageInfo) -> str:
    cwd = config.working_dir or image.working_dir or "/"
    if not cwd.startswith("/") or "\0" in cwd:
        raise InvalidArgument(f"config.working_dir: {cwd!r} must be an absolute path")
    return cwd


def parse_signal(name: str) -> int:
    """A signal name or number as images and the CRI Signal enum spell it -> its number; 0 if unknown."""
    text = name.strip().upper().removeprefix("SIGNAL_")
    if not text:
        return 0
    if text.isdigit():
        return int(text) if 0 < int(text) < signal.NSIG else 0
    if not text.startswith("SIG"):
        text = "SIG" + text
    for prefix, base_sig, sign in (("SIGRTMINPLUS", signal.SIGRTMIN, 1), ("SIGRTMIN+", signal.SIGRTMIN, 1),
                                   ("SIGRTMAXMINUS", signal.SIGRTMAX, -1), ("SIGRTMAX-", signal.SIGRTMAX, -1)):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(base_sig) + sign * int(text[len(prefix):])
    try:
        return int(signal.Signals[text])
    except KeyError:
        return 0


def stop_signal(config: pb.ContainerConfig, image: ImageInfo) -> int:
    if config.stop_signal:
        number = parse_signal(pb.Signal.Name(config.stop_signal))
        if not number:
            raise InvalidArgument(f"config.stop_signal: {pb.Signal.Name(config.stop_signal)} is not a signal here")
        return number
    if image.stop_signal:
        number = parse_signal(image.stop_signal)
        if not number:
            raise InvalidArgument(f"image config StopSignal {image.stop_signal!r} is not a signal")
        return number
    return int(signal.SIGTERM)


# ---------------------------------------------------------------- security


def _profile(profile: pb.SecurityProfile | None, legacy: str,
             field_name: str) -> tuple[seccomp.ProfileType | None, str]:
    from runtime.linux import seccomp
    if profile is not None:
        kinds = {pb.SecurityProfile.RuntimeDefault: seccomp.ProfileType.RUNTIME_DEFAULT,
                 pb.SecurityProfile.Unconfined: seccomp.ProfileType.UNCONFINED,
                 pb.SecurityProfile.Localhost: seccomp.ProfileType.LOCALHOST}
        return kinds[profile.profile_type], profile.localhost_ref
    return seccomp.parse_legacy_profile_path(legacy, field_name)


def _apparmor(sc: pb.LinuxContainerSecurityContext) -> tuple[AppArmorType | None, str]:
    from runtime.linux.security_context import AppArmorType
    if sc.HasField("apparmor"):
        kinds = {pb.SecurityProfile.RuntimeDefault: AppArmorType.RUNTIME_DEFAULT,
                 pb.SecurityProfile.Unconfined: AppArmorType.UNCONFINED,
                 pb.SecurityProfile.Localhost: AppArmorType.LOCALHOST}
        return kinds[sc.apparmor.profile_type], sc.apparmor.localhost_ref
    legacy = sc.apparmor_profile
    if not legacy:
        return None, ""
    if legacy == "unconfined":
        return AppArmorType.UNCONFINED, ""
    if legacy == "runtime/default":
        return AppArmorType.RUNTIME_DEFAULT, ""
    return AppArmorType.LOCALHOST, legacy.removeprefix("localhost/")


def security_request(config: pb.ContainerConfig, pod: pb.PodSandboxConfig,
                     image: ImageInfo) -> SecurityContextRequest:
    from runtime.linux import capabilities, users
    from runtime.linux.security_context import SecurityContextRequest
    sc = config.linux.security_context
    seccomp_type, seccomp_ref = _profile(sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path,
                                         "linux.security_context.seccomp_profile_path")
    apparmor_type, apparmor_ref = _apparmor(sc)
    caps = capabilities.CapabilityRequest(add=tuple(sc.capabilities.add_capabilities),
                                          drop=tuple(sc.capabilities.drop_capabilities),
                                          add_ambient=tuple(sc.capabilities.add_ambient_capabilities))
    policy = (users.GroupsPolicy.STRICT if sc.supplemental_groups_policy == pb.Strict
              else users.GroupsPolicy.MERGE)
    selinux = sc.selinux_options
    return SecurityContextRequest(
        privileged=sc.privileged, sandbox_privileged=pod.linux.security_context.privileged,
        capabilities=caps,
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_username=sc.run_as_username,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        supplemental_groups=tuple(sc.supplemental_groups), supplemental_groups_policy=policy,
        no_new_privs=sc.no_new_privs, masked_paths=tuple(sc.masked_paths), readonly_paths=tuple(sc.readonly_paths),
        seccomp_type=seccomp_type, seccomp_localhost_ref=seccomp_ref,
        apparmor_type=apparmor_type, apparmor_localhost_ref=apparmor_ref,
        selinux_options=(selinux.user, selinux.role, selinux.type, selinux.level), image_user=image.user)


def _security(config: pb.ContainerConfig, pod: pb.PodSandboxConfig, image: ImageInfo) -> SecurityParts:
    from runtime.linux.security_context import security_parts
    try:
        return security_parts(security_request(config, pod, image), image.layers)
    except (base.InvalidSpec, base.Unsupported) as e:
        raise InvalidArgument(e.message) from None


# ---------------------------------------------------------------- mounts and devices


def _mount_of(path: str, mountinfo: str) -> tuple[str, str] | None:
    """(mount point, optional fields) of the host mount `path` lives on."""
    best: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        parts = line.split()
        if len(parts) < 7:
            continue
        point = parts[4].replace("\\040", " ")
        sep = parts.index("-", 6)
        optional = " ".join(parts[6:sep])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, optional)
    return best


def check_propagation(source: str, propagation: int, where: str, mountinfo: str | None = None) -> None:
    """A shared mount needs a shared host mount under it, a slave one shared or slave (else nothing propagates)."""
    if propagation == pb.PROPAGATION_PRIVATE:
        return
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    found = _mount_of(source, text)
    optional = found[1] if found else ""
    shared = "shared:" in optional
    if propagation == pb.PROPAGATION_BIDIRECTIONAL and not shared:
        raise InvalidArgument(f"{where}.propagation: bidirectional propagation needs {source} to be on a shared "
                              f"mount, and {found[0] if found else '?'} is not (mount --make-rshared it)")
    if propagation == pb.PROPAGATION_HOST_TO_CONTAINER and not (shared or "master:" in optional):
        raise InvalidArgument(f"{where}.propagation: host-to-container propagation needs {source} to be on a "
                              f"shared or slave mount, and {found[0] if found else '?'} is neither")


def host_source(host_path: str, where: str) -> str:
    """The real host path of a bind source: symlinks followed, a missing path created as a directory."""
    if not host_path or not os.path.isabs(host_path) or "\0" in host_path:
        raise InvalidArgument(f"{where}.host_path: {host_path!r} must be an absolute host path")
    if not os.path.lexists(host_path):
        try:
            os.makedirs(host_path, mode=0o755, exist_ok=True)
        except OSError as e:
            raise InvalidArgument(f"{where}.host_path: {host_path} does not exist and cannot be created: "
                                  f"{e.strerror}") from None
    real = os.path.realpath(host_path)
    if not os.path.exists(real):
        raise InvalidArgument(f"{where}.host_path: {host_path} is a dangling symlink (to {real})")
    return real


def is_image_volume(m: pb.Mount) -> bool:
    return m.HasField("image") and bool(m.image.image or m.image.image_ref)


def image_volume_requests(config: pb.ContainerConfig) -> dict[int, str]:
    """Index -> image reference of each image volume, validated (read-only, a clean sub path)."""
    out = {}
    for i, m in enumerate(config.mounts):
        if not is_image_volume(m):
            continue
        where = f"config.mounts[{i}]"
        if not m.readonly:
            raise InvalidArgument(f"{where}.readonly: an image volume is always read-only; set readonly: true")
        if m.host_path:
            raise InvalidArgument(f"{where}: give either host_path or image, not both")
        sub = m.image_sub_path
        if sub and (sub.startswith("/") or "\0" in sub or ".." in sub.split("/")):
            raise InvalidArgument(f"{where}.image_sub_path: {sub!r} must be a relative path inside the image "
                                  "without '..'")
        out[i] = m.image.image_ref or m.image.image
    return out


def _image_volume_mount(m: pb.Mount, volume: ImageVolume, dest: str, where: str, idmap: bool = False) -> oci.Mount:
    """The image's layers at `dest`, read-only: one layer is a bind mount, several an overlay of lowerdirs."""
    sub = os.path.normpath(m.image_sub_path) if m.image_sub_path else ""
    dirs = [os.path.join(layer, sub) if sub else layer for layer in volume.layers]
    dirs = [d for d in dirs if os.path.lexists(d)]
    if not dirs:
        raise InvalidArgument(f"{where}.image_sub_path: {m.image_sub_path!r} does not exist in image "
                              f"{volume.image_id}")
    if len(dirs) == 1 or not os.path.isdir(dirs[-1]):
        if idmap:   # in a user namespace the image's root-owned files show as root's (an overlay gets that anyway)
            return oci.Mount(dest, dirs[-1], "bind", ("bind", "rprivate", "ro", "nodev", "idmap"))
        return oci.Mount(dest, dirs[-1], "bind", ("rbind", "rprivate", "ro", "nodev"))
    lower = ":".join(reversed([d for d in dirs if os.path.isdir(d)]))   # overlay lists the top layer first
    if len(lower) > 3500:
        raise InvalidArgument(f"{where}.image: image {volume.image_id} has too many layers to mount as a volume")
    return oci.Mount(dest, "overlay", "overlay", ("ro", "nodev", f"lowerdir={lower}"))


def mounts(config: pb.ContainerConfig, mountinfo: str | None = None,
           image_volumes: Mapping[int, ImageVolume] | None = None,
           pod_mappings: tuple[list[dict[str, int]], list[dict[str, int]]] = ([], [])) -> tuple[oci.Mount, ...]:
    out = []
    seen: set[str] = set()
    for i, m in enumerate(config.mounts):
        where = f"config.mounts[{i}]"
        if is_image_volume(m) and (image_volumes is None or i not in image_volumes):
            raise Unimplemented(f"{where}.image: the image volume was not resolved")
        idmap = _mount_idmap(m, where, pod_mappings)
        if m.recursive_read_only and not m.readonly:
            raise InvalidArgument(f"{where}.recursive_read_only: needs readonly: true")
        if m.recursive_read_only and m.propagation != pb.PROPAGATION_PRIVATE:
            raise InvalidArgument(f"{where}.recursive_read_only: needs private propagation (a read-only tree "
                                  "cannot receive or send mount events)")
        dest = m.container_path
        if not dest.startswith("/") or "\0" in dest or ".." in dest.split("/"):
            raise InvalidArgument(f"{where}.container_path: {dest!r} must be an absolute path without '..'")
        dest = os.path.normpath(dest)
        if dest in seen:
            raise InvalidArgument(f"{where}.container_path: {dest} is mounted twice")
        seen.add(dest)
        if m.propagation not in _PROPAGATION_OPTION:
            raise InvalidArgument(f"{where}.propagation: unknown value {m.propagation}")
        if image_volumes is not None and i in image_volumes:
            out.append(_image_volume_mount(m, image_volumes[i], dest, where, idmap=bool(pod_mappings[0])))
            continue
        source = host_source(m.host_path, where)
        check_propagation(source, m.propagation, where, mountinfo)
        options = ["rbind", _PROPAGATION_OPTION[m.propagation], "ro" if m.readonly else "rw"]
        if m.recursive_read_only:
            options.append("rro")
        if idmap:
            options[0] = "bind"     # idmapped binds are not recursive (every sub-mount would need idmap support)
            options.append("idmap")
        for opt in m.mount_options:
            if opt not in _ALLOWED_MOUNT_OPTIONS:
                raise InvalidArgument(f"{where}.mount_options: {opt!r} is not supported "
                                      f"(allowed: {', '.join(_ALLOWED_MOUNT_OPTIONS)})")
            options.append(opt)
        out.append(oci.Mount(dest, source, "bind", tuple(options)))
    return tuple(out)


def _mount_idmap(m: pb.Mount, where: str,
                 pod_mappings: tuple[list[dict[str, int]], list[dict[str, int]]]) -> bool:
    """Mount.uidMappings/gidMappings: an idmapped bind. Only the pod's own mapping is possible (the mount is
    idmapped with the pod's user namespace), so the ranges must be exactly the pod's, both given."""
    if not m.uidMappings and not m.gidMappings:
        return False
    if not pod_mappings[0]:
        raise InvalidArgument(f"{where}.uidMappings: id-mapped mounts need a pod with a user namespace "
                              "(namespace_options.userns_options mode POD)")
    given = ([{"containerID": x.container_id, "hostID": x.host_id, "size": x.length} for x in m.uidMappings],
             [{"containerID": x.container_id, "hostID": x.host_id, "size": x.length} for x in m.gidMappings])
    if given != pod_mappings:
        raise InvalidArgument(f"{where}.uidMappings: only the pod's own user namespace mappings are supported "
                              "for an id-mapped mount")
    if m.recursive_read_only:
        raise InvalidArgument(f"{where}: recursive_read_only cannot be combined with an id-mapped mount")
    return True


def devices(config: pb.ContainerConfig) -> tuple[tuple[oci.Device, ...], list[dict[str, Any]]]:
    """Host devices by path -> OCI devices and their device cgroup rules."""
    found, rules = [], []
    for i, d in enumerate(config.devices):
        where = f"config.devices[{i}]"
        perms = d.permissions or "rwm"
        if not set(perms) <= set("rwm"):
            raise InvalidArgument(f"{where}.permissions: {perms!r} must be a combination of r, w and m")
        if not d.host_path.startswith("/dev/"):
            raise InvalidArgument(f"{where}.host_path: {d.host_path!r} is not a device under /dev")
        try:
            st = os.stat(d.host_path)
        except OSError as e:
            raise InvalidArgument(f"{where}.host_path: cannot stat {d.host_path}: {e.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{where}.host_path: {d.host_path} is not a character or block device")
        dest = d.container_path or d.host_path
        if not dest.startswith("/dev/") or ".." in dest.split("/"):
            raise InvalidArgument(f"{where}.container_path: {dest!r} must be a path under /dev")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        found.append(oci.Device(path=dest, type=kind, major=major, minor=minor,
                                file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid))
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor, "access": perms})
    return tuple(found), rules


# ---------------------------------------------------------------- resources


def resources_dict(r: pb.LinuxContainerResources) -> dict[str, Any]:
    """The CRI message as a JSON-ready dict (stored in the record, echoed by ContainerStatus)."""
    return json_format.MessageToDict(r, preserving_proto_field_name=True)


def oci_resources(r: pb.LinuxContainerResources) -> dict[str, Any]:
    for name in ("cpu_period", "cpu_quota", "cpu_shares", "memory_limit_in_bytes", "memory_swap_limit_in_bytes"):
        value = getattr(r, name)
        if value < 0 and not (name == "cpu_quota" and value == -1) and not (
                name == "memory_swap_limit_in_bytes" and value == -1):
            raise InvalidArgument(f"linux.resources.{name}: {value} cannot be negative")
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        memory["swap"] = r.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


def oom_score_adj(r: pb.LinuxContainerResources) -> int | None:
    if not r.oom_score_adj:
        return None
    if not -1000 <= r.oom_score_adj <= 1000:
        raise InvalidArgument(f"linux.resources.oom_score_adj: {r.oom_score_adj} is outside [-1000, 1000]")
    return r.oom_score_adj


# ---------------------------------------------------------------- namespaces


def namespaces(config: pb.ContainerConfig, pod: PodInfo, target_pid_ns: str | None) -> tuple[oci.Namespace, ...]:
    ns = pod.namespaces
    out = [oci.Namespace("mount"), oci.Namespace("cgroup")]
    if "net" in ns:
        out.append(oci.Namespace("network", ns["net"]))
    if "ipc" in ns:
        out.append(oci.Namespace("ipc", ns["ipc"]))
    if "uts" in ns:
        out.append(oci.Namespace("uts", ns["uts"]))
    if "user" in ns:
        out.append(oci.Namespace("user", ns["user"]))
    pod_pid = pod.config.linux.security_context.namespace_options.pid
    mode = config.linux.security_context.namespace_options.pid
    if pod_pid == pb.NODE:
        return tuple(out)       # the pod runs in the host PID namespace; its containers do too
    if mode == pb.POD:
        if "pid" not in ns:
            raise InvalidArgument("linux.security_context.namespace_options.pid: POD needs a pod with a shared "
                                  "PID namespace (the sandbox's namespace_options.pid must be POD)")
        out.append(oci.Namespace("pid", ns["pid"]))
    elif mode == pb.TARGET:
        if not target_pid_ns:
            raise InvalidArgument("linux.security_context.namespace_options.target_id: the target container "
                                  "is not running in this pod")
        out.append(oci.Namespace("pid", target_pid_ns))
    elif mode == pb.NODE:
        raise InvalidArgument("linux.security_context.namespace_options.pid: NODE is a pod-level setting "
                              "(set it on the sandbox)")
    else:
        out.append(oci.Namespace("pid"))
    return tuple(out)


def id_mappings(config: pb.ContainerConfig, pod: PodInfo) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """The pod's user namespace ranges for the OCI spec. A container cannot have a user namespace of its
    own: its userns_options (kubelet repeats the pod's) must be unset, NODE with a NODE pod, or the pod's."""
    pod_opts = pod.config.linux.security_context.namespace_options
    pod_u = pod_opts.userns_options
    pod_has = pod_opts.HasField("userns_options") and pod_u.mode == pb.POD    # unset (mode 0 = POD) = the host's
    opts = config.linux.security_context.namespace_options
    where = "config.linux.security_context.namespace_options.userns_options"
    if opts.HasField("userns_options"):
        u = opts.userns_options
        if u.mode == pb.NODE and pod_has:
            raise InvalidArgument(f"{where}: NODE, but the pod has a user namespace (a container cannot leave it)")
        if u.mode == pb.POD and (not pod_has or list(u.uids) != list(pod_u.uids) or list(u.gids) != list(pod_u.gids)):
            raise InvalidArgument(f"{where}: POD must repeat the pod's user namespace mappings")
        if u.mode not in (pb.POD, pb.NODE):
            raise InvalidArgument(f"{where}.mode: {pb.NamespaceMode.Name(u.mode)} is not supported for user "
                                  "namespaces (containers share the pod's)")
    if not pod_has:
        return [], []
    if "user" not in pod.namespaces:
        raise InvalidArgument(f"{where}: the pod sandbox has no user namespace (was it created before it was "
                              "supported?)")
    if config.linux.security_context.privileged:
        raise InvalidArgument("config.linux.security_context.privileged: not allowed in a pod with a user namespace")

    def ranges(ms: Iterable[pb.IDMapping]) -> list[dict[str, int]]:
        return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.length} for m in ms]
    return ranges(pod_u.uids), ranges(pod_u.gids)


def _check_user_is_mapped(user: users.ResolvedUser, uid_maps: list[dict[str, int]],
                          gid_maps: list[dict[str, int]]) -> None:
    """In a user namespace only the mapped ids exist: an unmapped user would fail at start (EINVAL from
    setresuid), so say so at CreateContainer."""
    if not uid_maps:
        return

    def mapped(i: int, maps: list[dict[str, int]]) -> bool:
        return any(m["containerID"] <= i < m["containerID"] + m["size"] for m in maps)
    where = "config.linux.security_context"
    if not mapped(user.uid, uid_maps):
        raise InvalidArgument(f"{where}.run_as_user: uid {user.uid} is not mapped in the pod's user namespace "
                              f"(container ids 0..{uid_maps[0]['size'] - 1})")
    for gid in (user.gid, *user.additional_gids):
        if not mapped(gid, gid_maps):
            raise InvalidArgument(f"{where}: gid {gid} is not mapped in the pod's user namespace "
                                  f"(container ids 0..{gid_maps[0]['size'] - 1})")


# ---------------------------------------------------------------- the whole spec


def _default_mounts(privileged: bool) -> tuple[oci.Mount, ...]:
    if not privileged:
        return oci.default_mounts()
    # A privileged container sees /sys and its cgroups writable (containerd's WithPrivileged rules).
    return tuple(oci.Mount(m.destination, m.source, m.type, tuple(o for o in m.options if o != "ro"))
                 if m.destination in ("/sys", "/sys/fs/cgroup") else m for m in oci.default_mounts())


def _default_path_rules(spec: dict[str, Any], sc: pb.LinuxContainerSecurityContext) -> None:
    """No masked/read-only paths sent (crictl, critest) means the defaults, as in containerd: proto3 cannot
    tell "none" from "unset", and kubelet always sends its list (empty only for privileged containers)."""
    if sc.privileged:
        return
    linux = spec["linux"]
    if not sc.masked_paths:
        linux["maskedPaths"] = list(oci.DEFAULT_MASKED_PATHS)
    if not sc.readonly_paths:
        linux["readonlyPaths"] = list(oci.DEFAULT_READONLY_PATHS)


def build(container_id: str, config: pb.ContainerConfig, pod: PodInfo, image: ImageInfo,
          target_pid_ns: str | None = None, mountinfo: str | None = None,
          image_volumes: Mapping[int, ImageVolume] | None = None) -> BuiltSpec:
    sec = _security(config, pod.config, image)
    privileged = config.linux.security_context.privileged
    res = config.linux.resources
    dev_nodes, dev_rules = devices(config)
    resources = oci_resources(res)
    resources["devices"] = ([{"allow": True, "access": "rwm"}] if privileged
                            else [{"allow": False, "access": "rwm"}, *dev_rules])
    process = oci.Process(args=command_line(config, image), env=environment(config, image, pod.hostname),
                          cwd=working_dir(config, image), terminal=config.tty, oom_score_adj=oom_score_adj(res))
    uid_maps, gid_maps = id_mappings(config, pod)
    spec = oci.build(oci.ContainerConfig(
        process=process, root_readonly=config.linux.security_context.readonly_rootfs,
        mounts=mounts(config, mountinfo, image_volumes, (uid_maps, gid_maps)),
        default_mounts=_default_mounts(privileged), annotations=dict(config.annotations),
        linux=oci.LinuxConfig(cgroups_path=f"{pod.cgroup_parent}/{container_id}",
                              namespaces=namespaces(config, pod, target_pid_ns), resources=resources,
                              devices=dev_nodes, uid_mappings=tuple(uid_maps), gid_mappings=tuple(gid_maps))))
    _check_user_is_mapped(sec.user, uid_maps, gid_maps)
    sec.apply_to(spec)
    _default_path_rules(spec, config.linux.security_context)
    return BuiltSpec(spec=spec, user=sec.user, stop_signal=stop_signal(config, image),
                     resources=resources_dict(res))
