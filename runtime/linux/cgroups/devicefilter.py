"""cgroup v2 device control: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from runtime.linux.cgroups.devices import FIELD, DeviceRule
from runtime.linux.cgroups.errors import CgroupUnsupported

if TYPE_CHECKING:
    from runtime.linux.cgroups.apply import Step
    from runtime.linux.cgroups.cgroup import Cgroup


def v2_device_step(cg: Cgroup, rules: Sequence[DeviceRule]) -> Step:
    raise CgroupUnsupported(FIELD, "device rules on cgroup v2 (eBPF device filter) are not implemented yet")
