"""The host's cgroup hierarchies: which are mounted, and which one serves each controller.

v1: one mount per controller (or co-mounted group such as "cpu,cpuacct") plus named
hierarchies ("systemd"). Hybrid: the same plus a cgroup2 mount at "unified", which
may host controllers that v1 does not mount (hugetlb on this machine). v2: one mount.
`root` may be a fake tree in tests: everything is read from the files below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.linux.cgroups import fsio
from runtime.linux.cgroups.errors import CgroupUnsupported
from runtime.linux.cgroups.naming import check_cgroup_path
from runtime.linux.host import CgroupMode, cgroup_mode

if TYPE_CHECKING:
    from runtime.linux.cgroups.cgroup import Cgroup

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNIFIED = "unified"   # our name of the cgroup v2 hierarchy (its mount is /sys/fs/cgroup/unified on hybrid hosts)


@dataclass
class Hierarchy:
    root: Path
    mode: CgroupMode
    mounts: dict[str, Path] = field(default_factory=dict)        # hierarchy name -> mount point
    controllers: dict[str, str] = field(default_factory=dict)    # controller -> hierarchy name

    @property
    def v2(self) -> bool:
        return self.mode is CgroupMode.V2

    def cgroup(self, path: str) -> Cgroup:
        """A handle on the cgroup at `path` (below every mount); nothing is created."""
        from runtime.linux.cgroups.cgroup import Cgroup
        return Cgroup(self, check_cgroup_path(path))

    def hierarchy_of(self, controller: str) -> str | None:
        return self.controllers.get(controller)

    def has(self, controller: str) -> bool:
        return controller in self.controllers


def open_hierarchy(root: Path | str = CGROUP_ROOT) -> Hierarchy:
    root = Path(root)
    mode = cgroup_mode(root)
    if mode is CgroupMode.NONE:
        raise CgroupUnsupported("cgroup", f"no cgroup filesystem is mounted at {root}")
    h = Hierarchy(root=root, mode=mode)
    if mode is CgroupMode.V2:
        h.mounts[UNIFIED] = root
        for c in _v2_controllers(root):
            h.controllers[c] = UNIFIED
        return h
    for entry in sorted(root.iterdir()):
        # Symlinks ("cpu" -> "cpu,cpuacct") are aliases of a real mount seen on its own.
        if entry.is_symlink() or not (entry / "cgroup.procs").exists():
            continue
        if (entry / "cgroup.controllers").exists():
            continue   # the hybrid v2 mount, handled below
        h.mounts[entry.name] = entry
        for c in entry.name.split(","):
            if c and c != "systemd" and not c.startswith("name="):
                h.controllers[c] = entry.name
    unified = root / UNIFIED
    if mode is CgroupMode.HYBRID and (unified / "cgroup.procs").exists():
        h.mounts[UNIFIED] = unified
        for c in _v2_controllers(unified):
            h.controllers.setdefault(c, UNIFIED)
    return h


def _v2_controllers(mount: Path) -> list[str]:
    try:
        return fsio.read(mount / "cgroup.controllers").split()
    except OSError:
        return []


def current_cgroup(pid: int | str = "self") -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; "name=systemd" stays as is, the v2 entry has the key ""."""
    out: dict[str, str] = {}
    for line in fsio.read(f"/proc/{pid}/cgroup").splitlines():
        _hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers:
            out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out
