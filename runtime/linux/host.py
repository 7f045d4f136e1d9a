"""What this Linux host supports, read from /proc and /sys (no side effects).

Used by `cri-shim check`, by the Status RPC (RuntimeReady) and by the
RuntimeConfig RPC (which cgroup driver can actually be used).
"""

from __future__ import annotations

import ctypes.util
import os
from dataclasses import replace
from pathlib import Path

from runtime.host_report import REQUIRED_CONTROLLERS, CgroupMode, HostReport

__all__ = ["REQUIRED_CONTROLLERS", "CgroupMode", "HostReport", "probe"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_mode(root: Path = CGROUP_ROOT) -> CgroupMode:
    if (root / "cgroup.controllers").exists():
        return CgroupMode.V2
    if not root.is_dir() or not any(root.iterdir()):
        return CgroupMode.NONE
    if (root / "unified" / "cgroup.controllers").exists():
        return CgroupMode.HYBRID
    return CgroupMode.V1


def cgroup_controllers(mode: CgroupMode, root: Path = CGROUP_ROOT) -> tuple[str, ...]:
    if mode is CgroupMode.V2:
        return tuple((root / "cgroup.controllers").read_text().split())
    if mode is CgroupMode.NONE:
        return ()
    # v1: a controller is usable when it is enabled and its hierarchy is mounted.
    enabled = []
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        name, _hier, _num, on = line.split()
        if on == "1" and (root / name).is_dir():
            enabled.append(name)
    return tuple(enabled)


def _filesystems() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}


def overlayfs_supported() -> bool:
    # The module may be loadable but not loaded yet; /sys/module/overlay tells either way.
    return "overlay" in _filesystems() or Path("/sys/module/overlay").exists()


def seccomp_kernel() -> bool:
    return any(line.startswith("Seccomp:") for line in Path("/proc/self/status").read_text().splitlines())


def user_namespaces() -> bool:
    try:
        return int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        return False


def kernel_release() -> str:
    return os.uname().release


def idmapped_mounts_kernel() -> bool:
    # mount_setattr(MOUNT_ATTR_IDMAP) arrived in 5.12; overlayfs on idmapped layers in 5.19.
    try:
        major, minor = (int(x) for x in kernel_release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 19)


def systemd_pid1() -> bool:
    return Path("/run/systemd/system").is_dir()


KSM_RUN = Path("/sys/kernel/mm/ksm/run")


def start_ksm(run_file: Path = KSM_RUN) -> str:
    """Start the kernel's samepage merging if it is stopped ("0"); "" when it runs, else why it cannot.
    KSM scans only memory marked mergeable (the pod shims', and that of any program that opted in)."""
    try:
        if run_file.read_text().strip() != "1":
            run_file.write_text("1")
    except OSError as e:
        return f"cannot start KSM through {run_file}: {e.strerror or e}"
    return ""


def probe() -> HostReport:
    mode = cgroup_mode()
    controllers = cgroup_controllers(mode)
    report = HostReport(
        cgroup_mode=mode,
        cgroup_controllers=controllers,
        overlayfs=overlayfs_supported(),
        seccomp_kernel=seccomp_kernel(),
        libseccomp=ctypes.util.find_library("seccomp"),
        user_namespaces=user_namespaces(),
        idmapped_mounts_kernel=idmapped_mounts_kernel(),
        systemd_pid1=systemd_pid1(),
        kernel=kernel_release(),
    )
    problems = []
    if mode is CgroupMode.NONE:
        problems.append("no cgroup filesystem is mounted under /sys/fs/cgroup")
    elif report.missing_controllers:
        problems.append(f"cgroup controllers missing: {', '.join(report.missing_controllers)}")
    if not report.overlayfs:
        problems.append("overlayfs is not available (modprobe overlay)")
    return replace(report, problems=tuple(problems))
