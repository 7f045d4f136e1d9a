"""What a host supports, as the Status RPC reports it (portable: no OS calls here).

`runtime.linux.host.probe()` fills it in on Linux; on a Windows node none of
the Linux kernel features apply (`windows_report()`). It lives outside
`runtime.linux` so the daemon can import it on Windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# Controllers a pod runtime cannot do without: limits kubelet sets on every pod.
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")


class CgroupMode(Enum):
    V1 = "v1"            # only legacy hierarchies
    HYBRID = "hybrid"    # legacy hierarchies plus an (empty-ish) unified mount
    V2 = "v2"            # unified hierarchy only
    NONE = "none"        # no cgroup filesystem mounted


@dataclass(frozen=True)
class HostReport:
    cgroup_mode: CgroupMode
    cgroup_controllers: tuple[str, ...]
    overlayfs: bool
    seccomp_kernel: bool
    libseccomp: str | None
    user_namespaces: bool
    idmapped_mounts_kernel: bool
    systemd_pid1: bool
    kernel: str
    problems: tuple[str, ...] = field(default=())

    @property
    def missing_controllers(self) -> tuple[str, ...]:
        return tuple(c for c in REQUIRED_CONTROLLERS if c not in self.cgroup_controllers)


def windows_report(kernel: str) -> HostReport:
    """Status' host section on a Windows node: none of the Linux kernel features apply."""
    return HostReport(cgroup_mode=CgroupMode.NONE, cgroup_controllers=(), overlayfs=False, seccomp_kernel=False,
                      libseccomp=None, user_namespaces=False, idmapped_mounts_kernel=False, systemd_pid1=False,
                      kernel=kernel)
