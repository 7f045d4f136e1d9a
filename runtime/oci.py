"""Build the OCI runtime spec (`config.json`) of a container from plain inputs.

The spec in the bundle is the contract between the daemon and every backend:
the native Linux runtime, an external OCI runtime (runc) and Windows read the
same file. It is written pretty-printed with sorted keys so a person can read
what a container was asked to be.

Defaults follow containerd's (`pkg/oci/spec.go`): the standard /proc, /dev,
/dev/pts, /dev/shm, /dev/mqueue, /sys and /sys/fs/cgroup mounts, kubelet's
masked and read-only paths, the 14 default capabilities and RLIMIT_NOFILE
1024. The spec is platform-tagged: `linux` or `windows` is filled from
`LinuxConfig` / `WindowsConfig`, never both.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_VERSION = "1.1.0"
CONFIG_NAME = "config.json"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
DEFAULT_MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Namespace kinds as the OCI spec names them.
NAMESPACE_TYPES = ("pid", "network", "ipc", "uts", "mount", "cgroup", "user", "time")
PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared")


@dataclass(frozen=True)
class Mount:
    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "source": self.source, "type": self.type,
                "options": list(self.options)}


def default_mounts(shm_size: int = 64 << 20) -> tuple[Mount, ...]:
    return (
        Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts",
              ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
        Mount("/dev/shm", "shm", "tmpfs", ("nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size // 1024}k")),
        Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup", ("nosuid", "noexec", "nodev", "relatime", "ro")),
    )


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None
    username: str = ""          # informational (Windows uses it; Linux resolves before building)


@dataclass(frozen=True)
class Rlimit:
    type: str                   # "RLIMIT_NOFILE"
    soft: int
    hard: int


DEFAULT_RLIMITS = (Rlimit("RLIMIT_NOFILE", 1024, 1024),)


@dataclass(frozen=True)
class Capabilities:
    bounding: tuple[str, ...] = DEFAULT_CAPABILITIES
    effective: tuple[str, ...] = DEFAULT_CAPABILITIES
    permitted: tuple[str, ...] = DEFAULT_CAPABILITIES
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = (DEFAULT_PATH_ENV,)
    cwd: str = "/"
    user: User = field(default_factory=User)
    terminal: bool = False
    rlimits: tuple[Rlimit, ...] = DEFAULT_RLIMITS
    capabilities: Capabilities | None = field(default_factory=Capabilities)
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    apparmor_profile: str = ""
    selinux_label: str = ""


@dataclass(frozen=True)
class Namespace:
    type: str                   # one of NAMESPACE_TYPES
    path: str = ""              # join this one; "" = a new namespace


@dataclass(frozen=True)
class Device:
    path: str
    type: str                   # "c", "b", "u", "p"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class LinuxConfig:
    cgroups_path: str
    namespaces: tuple[Namespace, ...] = (
        Namespace("pid"), Namespace("ipc"), Namespace("uts"), Namespace("mount"),
        Namespace("network"), Namespace("cgroup"),
    )
    resources: Mapping[str, Any] | None = None
    devices: tuple[Device, ...] = ()
    # None: the defaults above. An empty tuple: nothing masked (kubelet's "Unmasked" /proc).
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    sysctl: Mapping[str, str] = field(default_factory=dict)
    seccomp: Mapping[str, Any] | None = None
    rootfs_propagation: str = ""   # "" = derived from the mounts (as containerd does)
    uid_mappings: tuple[Mapping[str, int], ...] = ()
    gid_mappings: tuple[Mapping[str, int], ...] = ()
    mount_label: str = ""


@dataclass(frozen=True)
class WindowsConfig:
    """Placeholder for the Windows section; the Windows backend fills `body` (OCI `windows` object)."""

    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerConfig:
    process: Process
    hostname: str = ""
    root_path: str = "rootfs"
    root_readonly: bool = False
    # Mounts after the defaults; one with the same destination as a default replaces it.
    mounts: tuple[Mount, ...] = ()
    default_mounts: tuple[Mount, ...] = field(default_factory=default_mounts)
    annotations: Mapping[str, str] = field(default_factory=dict)
    linux: LinuxConfig | None = None
    windows: WindowsConfig | None = None


def build(config: ContainerConfig) -> dict[str, Any]:
    """The OCI runtime spec as a JSON-ready dict."""
    if (config.linux is None) == (config.windows is None):
        raise ValueError("exactly one of linux and windows must be given")
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": _process(config.process, linux=config.linux is not None),
        "root": {"path": config.root_path, "readonly": config.root_readonly},
        "mounts": [m.to_json() for m in merge_mounts(config.default_mounts, config.mounts)],
        "annotations": dict(config.annotations),
    }
    if config.hostname:
        spec["hostname"] = config.hostname
    if config.linux is not None:
        spec["linux"] = _linux(config.linux, config.mounts)
    if config.windows is not None:
        spec["windows"] = dict(config.windows.body)
    return spec


def merge_mounts(defaults: tuple[Mount, ...], extra: tuple[Mount, ...]) -> list[Mount]:
    """Defaults first, minus those an extra mount replaces (or sits above, like runc), then the extras."""
    replaced = {os.path.normpath(m.destination) for m in extra}
    out = [d for d in defaults if os.path.normpath(d.destination) not in replaced]
    return out + list(extra)


def _process(p: Process, linux: bool) -> dict[str, Any]:
    user: dict[str, Any] = {"uid": p.user.uid, "gid": p.user.gid}
    if p.user.additional_gids:
        user["additionalGids"] = list(p.user.additional_gids)
    if p.user.umask is not None:
        user["umask"] = p.user.umask
    if p.user.username:
        user["username"] = p.user.username
    out: dict[str, Any] = {
        "terminal": p.terminal, "user": user, "args": list(p.args), "env": list(p.env), "cwd": p.cwd,
    }
    if linux:
        out["rlimits"] = [{"type": r.type, "soft": r.soft, "hard": r.hard} for r in p.rlimits]
        out["noNewPrivileges"] = p.no_new_privileges
        if p.capabilities is not None:
            c = p.capabilities
            out["capabilities"] = {"bounding": list(c.bounding), "effective": list(c.effective),
                                   "permitted": list(c.permitted), "inheritable": list(c.inheritable),
                                   "ambient": list(c.ambient)}
        if p.oom_score_adj is not None:
            out["oomScoreAdj"] = p.oom_score_adj
        if p.apparmor_profile:
            out["apparmorProfile"] = p.apparmor_profile
        if p.selinux_label:
            out["selinuxLabel"] = p.selinux_label
    return out


def _linux(cfg: LinuxConfig, extra_mounts: tuple[Mount, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cgroupsPath": cfg.cgroups_path,
        "namespaces": [{"type": n.type, **({"path": n.path} if n.path else {})} for n in cfg.namespaces],
        "resources": dict(cfg.resources) if cfg.resources is not None else {
            "devices": [{"allow": False, "access": "rwm"}]},
        "maskedPaths": list(DEFAULT_MASKED_PATHS if cfg.masked_paths is None else cfg.masked_paths),
        "readonlyPaths": list(DEFAULT_READONLY_PATHS if cfg.readonly_paths is None else cfg.readonly_paths),
    }
    if cfg.devices:
        out["devices"] = [{"path": d.path, "type": d.type, "major": d.major, "minor": d.minor,
                           "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid} for d in cfg.devices]
    if cfg.sysctl:
        out["sysctl"] = dict(cfg.sysctl)
    if cfg.seccomp is not None:
        out["seccomp"] = dict(cfg.seccomp)
    propagation = cfg.rootfs_propagation or rootfs_propagation_for(extra_mounts)
    if propagation:
        out["rootfsPropagation"] = propagation
    if cfg.uid_mappings:
        out["uidMappings"] = [dict(m) for m in cfg.uid_mappings]
        out["gidMappings"] = [dict(m) for m in cfg.gid_mappings]
    if cfg.mount_label:
        out["mountLabel"] = cfg.mount_label
    return out


def rootfs_propagation_for(mounts: tuple[Mount, ...]) -> str:
    """containerd's rule: an rshared mount needs a shared root, an rslave mount a slave root."""
    options = {o for m in mounts for o in m.options}
    if "rshared" in options or "shared" in options:
        return "rshared"
    if "rslave" in options or "slave" in options:
        return "rslave"
    return ""


def write(bundle_dir: str | Path, spec: Mapping[str, Any]) -> Path:
    """Write `config.json` atomically (temp file, fsync, rename), mode 0600, readable JSON."""
    bundle = Path(bundle_dir)
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = bundle / CONFIG_NAME
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=bundle)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read(bundle_dir: str | Path) -> dict[str, Any]:
    """Load a bundle's spec; a missing or malformed file raises ValueError naming the file."""
    path = Path(bundle_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no OCI runtime spec in the bundle") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the OCI runtime spec: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the OCI runtime spec must be a JSON object")
    return data
