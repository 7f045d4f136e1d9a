"""cgroups for runtime/linux: create, limit, watch and remove a container's or pod's cgroup.

    h = open_hierarchy()                                   # detects v1 / hybrid / v2
    path = cgroup_path(Driver.CGROUPFS, "/kubepods/burstable/pod<uid>", container_id)
    cg = h.cgroup(path)
    cg.create(); cg.apply(spec["linux"]["resources"])      # OCI linux.resources JSON
    child: write its pid into each of cg.procs_files() before exec
    cg.stats(); cg.oom_kill_count()                        # read the OOM count before destroy()
    cg.kill_all(); cg.destroy()

Errors are CgroupError (a runtime.base.RuntimeFailure); CgroupInvalid is also an
InvalidSpec, CgroupUnsupported an Unsupported, CgroupBusy a WrongState. Each names the
spec key at fault in `field`.
"""

from runtime.linux.cgroups.cgroup import Cgroup
from runtime.linux.cgroups.devices import DEFAULT_DEVICE_RULES, DeviceRule, effective_rules
from runtime.linux.cgroups.errors import CgroupBusy, CgroupError, CgroupInvalid, CgroupUnsupported
from runtime.linux.cgroups.hierarchy import CGROUP_ROOT, UNIFIED, Hierarchy, current_cgroup, open_hierarchy
from runtime.linux.cgroups.naming import Driver, cgroup_path, default_driver, driver_from, expand_slice, slice_for
from runtime.linux.cgroups.stats import CgroupStats
from runtime.linux.host import CgroupMode

__all__ = [
    "CGROUP_ROOT", "DEFAULT_DEVICE_RULES", "UNIFIED", "Cgroup", "CgroupBusy", "CgroupError", "CgroupInvalid",
    "CgroupMode", "CgroupStats", "CgroupUnsupported", "DeviceRule", "Driver", "Hierarchy", "cgroup_path",
    "current_cgroup", "default_driver", "driver_from", "effective_rules", "expand_slice", "open_hierarchy", "slice_for",
]
