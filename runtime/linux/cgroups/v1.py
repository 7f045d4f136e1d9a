"""cgroup v1 (and hybrid): resources -> writes, and the v1 statistics files."""

from __future__ import annotations

from runtime.linux.cgroups import plan as p
from runtime.linux.cgroups.errors import CgroupUnsupported
from runtime.linux.cgroups.resources import ROOT, UNLIMITED, Resources

MEMSW = "memory.memsw.limit_in_bytes"


def plan(res: Resources, view: p.View, hugetlb_in_unified: bool) -> list[p.Write]:
    if res.unified:
        key = sorted(res.unified)[0]
        raise CgroupUnsupported(f"{ROOT}.unified[{key}]", "unified (cgroup v2) keys need a cgroup v2 host; "
                                "this host runs cgroup v1")
    writes: list[p.Write] = []
    writes += _cpu(res)
    writes += _memory(res, view)
    if res.pids_limit is not None:
        writes.append(p.Write("pids", "pids.max", _pids_value(res.pids_limit), f"{ROOT}.pids.limit"))
    writes += _hugepages(res, hugetlb_in_unified)
    writes += _block_io(res, view)
    return writes


def _pids_value(limit: int) -> str:
    # runc writes 1 for 0 (systemd cannot express TasksMax=0) so both drivers behave alike.
    return "max" if limit < 0 else str(max(limit, 1))


def _cpu(res: Resources) -> list[p.Write]:
    c, key = res.cpu, f"{ROOT}.cpu"
    out = []
    if c.shares is not None:
        out.append(p.Write("cpu", "cpu.shares", str(c.shares), f"{key}.shares"))
    if c.period is not None:
        # A shorter period can exceed the parent's quota until the new quota is in: retry after it.
        out.append(p.Write("cpu", "cpu.cfs_period_us", str(c.period), f"{key}.period",
                           retry_einval=c.quota is not None))
    if c.burst is not None:
        out.append(p.Write("cpu", "cpu.cfs_burst_us", str(c.burst), f"{key}.burst",
                           retry_einval=c.quota is not None))
    if c.quota is not None:
        out.append(p.Write("cpu", "cpu.cfs_quota_us", str(c.quota), f"{key}.quota"))
    if c.realtime_period is not None:
        out.append(p.Write("cpu", "cpu.rt_period_us", str(c.realtime_period), f"{key}.realtimePeriod",
                           retry_einval=c.realtime_runtime is not None))
    if c.realtime_runtime is not None:
        out.append(p.Write("cpu", "cpu.rt_runtime_us", str(c.realtime_runtime), f"{key}.realtimeRuntime"))
    if c.idle is not None:
        out.append(p.Write("cpu", "cpu.idle", str(c.idle), f"{key}.idle"))
    if c.cpus is not None:
        out.append(p.Write("cpuset", "cpuset.cpus", c.cpus, f"{key}.cpus"))
    if c.mems is not None:
        out.append(p.Write("cpuset", "cpuset.mems", c.mems, f"{key}.mems"))
    return out


def _memory(res: Resources, view: p.View) -> list[p.Write]:
    m, key = res.memory, f"{ROOT}.memory"
    limit, swap = m.limit, m.swap
    has_memsw = view.has_file("memory", MEMSW)
    if limit == UNLIMITED and swap is None and has_memsw:
        swap = UNLIMITED   # "unlimited memory" must lift the memory+swap cap too, or it still binds
    out: list[p.Write] = []
    limit_w = None if limit is None else p.Write("memory", "memory.limit_in_bytes", str(limit), f"{key}.limit")
    swap_w = None
    if swap is not None:
        if has_memsw:
            swap_w = p.Write("memory", MEMSW, str(swap), f"{key}.swap")
        elif swap != UNLIMITED and swap != limit:
            raise CgroupUnsupported(f"{key}.swap", "swap accounting is off on this host "
                                    "(memory.memsw.* missing; boot with swapaccount=1)")
        # else: without swap accounting "no swap limit" / "swap == limit" is already what the kernel does.
    # The kernel wants memory.limit <= memsw.limit at every moment: raise memsw first when growing.
    if limit_w and swap_w:
        current = view.read_value("memory", "memory.limit_in_bytes")
        grow = swap == UNLIMITED or (current is not None and current.isdigit() and int(current) < int(swap_w.value))
        out += [swap_w, limit_w] if grow else [limit_w, swap_w]
    else:
        out += [w for w in (limit_w, swap_w) if w]
    if m.reservation is not None:
        out.append(p.Write("memory", "memory.soft_limit_in_bytes", str(m.reservation), f"{key}.reservation"))
    if m.disable_oom_killer:
        out.append(p.Write("memory", "memory.oom_control", "1", f"{key}.disableOOMKiller"))
    if m.swappiness is not None:
        out.append(p.Write("memory", "memory.swappiness", str(m.swappiness), f"{key}.swappiness"))
    return out


def _hugepages(res: Resources, in_unified: bool) -> list[p.Write]:
    out = []
    for h in res.hugepages:
        key = f"{ROOT}.hugepageLimits[{h.index}]"
        if in_unified:
            # Hybrid host: hugetlb is only available in the cgroup2 mount, with v2 file names.
            out.append(p.Write("hugetlb", f"hugetlb.{h.page_size}.max", str(h.limit), f"{key}.pageSize"))
            out.append(p.Write("hugetlb", f"hugetlb.{h.page_size}.rsvd.max", str(h.limit), f"{key}.pageSize",
                               optional=True))
        else:
            out.append(p.Write("hugetlb", f"hugetlb.{h.page_size}.limit_in_bytes", str(h.limit), f"{key}.pageSize"))
            out.append(p.Write("hugetlb", f"hugetlb.{h.page_size}.rsvd.limit_in_bytes", str(h.limit),
                               f"{key}.pageSize", optional=True))
    return out


_V1_THROTTLE = {
    "throttleReadBpsDevice": "blkio.throttle.read_bps_device",
    "throttleWriteBpsDevice": "blkio.throttle.write_bps_device",
    "throttleReadIOPSDevice": "blkio.throttle.read_iops_device",
    "throttleWriteIOPSDevice": "blkio.throttle.write_iops_device",
}


def _block_io(res: Resources, view: p.View) -> list[p.Write]:
    b, key = res.block_io, f"{ROOT}.blockIO"
    out = []
    if b.weight is not None:
        # Kernels without CFQ only have the BFQ knob (same 10..1000 range).
        name = "blkio.weight" if view.has_file("blkio", "blkio.weight") or \
            not view.has_file("blkio", "blkio.bfq.weight") else "blkio.bfq.weight"
        out.append(p.Write("blkio", name, str(b.weight), f"{key}.weight"))
    for t in b.throttles:
        out.append(p.Write("blkio", _V1_THROTTLE[t.key], f"{t.major}:{t.minor} {t.rate}",
                           f"{key}.{t.key}[{t.index}]"))
    return out
