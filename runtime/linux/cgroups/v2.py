"""cgroup v2: resources -> writes (the v1-shaped OCI values converted as runc does)."""

from __future__ import annotations

from runtime.linux.cgroups import plan as p
from runtime.linux.cgroups.errors import CgroupInvalid, CgroupUnsupported
from runtime.linux.cgroups.resources import ROOT, UNLIMITED, Resources

DEFAULT_PERIOD_US = 100000   # the kernel's cpu.max period when none is given


def plan(res: Resources, view: p.View) -> list[p.Write]:
    writes: list[p.Write] = []
    writes += _cpu(res)
    writes += _memory(res)
    if res.pids_limit is not None:
        limit = res.pids_limit
        # runc writes 1 for 0 (systemd cannot express TasksMax=0) so both drivers behave alike.
        writes.append(p.Write("pids", "pids.max", "max" if limit < 0 else str(max(limit, 1)), f"{ROOT}.pids.limit"))
    for h in res.hugepages:
        key = f"{ROOT}.hugepageLimits[{h.index}].pageSize"
        writes.append(p.Write("hugetlb", f"hugetlb.{h.page_size}.max", str(h.limit), key))
        # Reservations (5.7+) are limited too, or a mapping can reserve pages past the limit.
        writes.append(p.Write("hugetlb", f"hugetlb.{h.page_size}.rsvd.max", str(h.limit), key, optional=True))
    writes += _io(res, view)
    # `unified` comes last: its values override the converted ones (runc does the same).
    for key, value in sorted(res.unified.items()):
        writes.append(p.Write(key.split(".", 1)[0], key, value, f"{ROOT}.unified[{key}]"))
    return writes


def _cpu(res: Resources) -> list[p.Write]:
    c, key = res.cpu, f"{ROOT}.cpu"
    if c.realtime_runtime is not None or c.realtime_period is not None:
        raise CgroupUnsupported(f"{key}.realtimeRuntime", "real-time CPU bandwidth is not available on cgroup v2")
    out = []
    if c.shares is not None:
        out.append(p.Write("cpu", "cpu.weight", str(p.shares_to_weight(c.shares)), f"{key}.shares"))
    if c.idle is not None:
        out.append(p.Write("cpu", "cpu.idle", str(c.idle), f"{key}.idle"))
    if c.burst is not None:
        out.append(p.Write("cpu", "cpu.max.burst", str(c.burst), f"{key}.burst",
                           retry_einval=c.quota is not None or c.period is not None))
    if c.quota is not None or c.period is not None:
        quota = "max" if c.quota in (None, UNLIMITED) else str(c.quota)
        out.append(p.Write("cpu", "cpu.max", f"{quota} {c.period or DEFAULT_PERIOD_US}",
                           f"{key}.quota" if c.quota is not None else f"{key}.period"))
    if c.cpus is not None:
        out.append(p.Write("cpuset", "cpuset.cpus", c.cpus, f"{key}.cpus"))
    if c.mems is not None:
        out.append(p.Write("cpuset", "cpuset.mems", c.mems, f"{key}.mems"))
    return out


def _memory(res: Resources) -> list[p.Write]:
    m, key = res.memory, f"{ROOT}.memory"
    if m.swappiness is not None:
        raise CgroupUnsupported(f"{key}.swappiness", "cgroup v2 has no per-cgroup swappiness")
    if m.disable_oom_killer:
        raise CgroupUnsupported(f"{key}.disableOOMKiller", "cgroup v2 cannot disable the OOM killer per cgroup")
    if m.swap is not None and m.swap != UNLIMITED and m.limit is None:
        # v2 limits swap alone; OCI gives memory+swap, so the swap share is unknown without the memory limit.
        raise CgroupInvalid(f"{key}.swap", "a swap limit needs memory.limit on cgroup v2")
    out = []
    swap = p.swap_to_v2(m.swap, m.limit)
    if swap is not None:
        # No swap controller (swapaccount off / no swap): "max" and "0" already hold, like runc accepts.
        out.append(p.Write("memory", "memory.swap.max", p.v2_limit(swap), f"{key}.swap",
                           optional=swap in (UNLIMITED, 0)))
    if m.limit is not None:
        out.append(p.Write("memory", "memory.max", p.v2_limit(m.limit), f"{key}.limit"))
    if m.reservation is not None:
        out.append(p.Write("memory", "memory.low", p.v2_limit(m.reservation), f"{key}.reservation"))
    return out


_V2_THROTTLE = {
    "throttleReadBpsDevice": "rbps",
    "throttleWriteBpsDevice": "wbps",
    "throttleReadIOPSDevice": "riops",
    "throttleWriteIOPSDevice": "wiops",
}


def _io(res: Resources, view: p.View) -> list[p.Write]:
    b, key = res.block_io, f"{ROOT}.blockIO"
    out = []
    if b.weight is not None:
        if view.has_file("io", "io.bfq.weight"):
            out.append(p.Write("io", "io.bfq.weight", str(b.weight), f"{key}.weight"))
        else:
            out.append(p.Write("io", "io.weight", str(p.blkio_weight_to_io_weight(b.weight)), f"{key}.weight"))
    for t in b.throttles:
        rate = "max" if t.rate == 0 else str(t.rate)   # v1 uses 0 to remove a limit
        out.append(p.Write("io", "io.max", f"{t.major}:{t.minor} {_V2_THROTTLE[t.key]}={rate}",
                           f"{key}.{t.key}[{t.index}]"))
    return out
