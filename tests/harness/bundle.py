"""OCI bundles for tests: a busybox rootfs and a config.json shaped like the one cri-shim's spec builder makes."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from runtime.linux import capabilities

BUSYBOX = "/bin/busybox"

# kubelet's defaults (pkg/securitycontext/util.go), as sent in every non-privileged CreateContainer.
KUBELET_MASKED = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                  "/sys/devices/virtual/powercap"]
KUBELET_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
GROUP = "root:x:0:\nuser:x:1000:user\nextra:x:50000:user\n"

_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755",
                                                                            "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
]


def make_rootfs(path: Path) -> Path:
    """A small busybox image: /bin/<applets>, /etc/passwd and /etc/group with a user in a second group."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"):
        (path / d).mkdir(parents=True, exist_ok=True)
    (path / "bin/busybox").write_bytes(Path(BUSYBOX).read_bytes())
    (path / "bin/busybox").chmod(0o755)
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (path / "bin" / applet).symlink_to("busybox")  # relative: valid inside the container
    (path / "etc/passwd").write_text(PASSWD)
    (path / "etc/group").write_text(GROUP)
    return path


def oci_spec(args: list[str], *, uid: int = 0, gid: int = 0, groups: tuple[int, ...] = (),
             caps: dict[str, list[str]] | None = None, no_new_privs: bool = True,
             seccomp: dict[str, Any] | None = None, cgroups_path: str = "",
             masked: list[str] | None = None, readonly: list[str] | None = None,
             sysctl: dict[str, str] | None = None, hostname: str = "cri-shim-test") -> dict[str, Any]:
    if caps is None:
        caps = capabilities.oci_capabilities(None, privileged=False, uid=uid)
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": list(KUBELET_MASKED if masked is None else masked),
        "readonlyPaths": list(KUBELET_READONLY if readonly is None else readonly),
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if sysctl:
        linux["sysctl"] = dict(sysctl)
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": uid, "gid": gid, "additionalGids": list(groups)},
                    "args": list(args), "env": ["PATH=/bin", "HOME=/root"], "cwd": "/",
                    "capabilities": caps, "noNewPrivileges": no_new_privs},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": hostname,
        "mounts": copy.deepcopy(_MOUNTS),
        "linux": linux,
    }


def write_bundle(bundle: Path, rootfs: Path, spec: dict[str, Any]) -> Path:
    """A bundle dir with config.json and a `rootfs` symlink to a shared read-only rootfs."""
    bundle.mkdir(parents=True, exist_ok=True)
    spec = copy.deepcopy(spec)
    spec["root"]["path"] = str(rootfs)
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle
