"""Usage numbers of one cgroup, read the way kubelet/cadvisor read them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from runtime.linux.cgroups import fsio

# v1 shows "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages); anything this big is none.
_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class CgroupStats:
    timestamp_ns: int
    cpu_usage_ns: int | None = None
    memory_usage_bytes: int | None = None
    # usage minus inactive file pages: what kubelet evicts and OOM-decides on (cadvisor's working set)
    memory_working_set_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_limit_bytes: int | None = None     # None: unlimited
    page_faults: int | None = None
    major_page_faults: int | None = None
    pids_current: int | None = None
    oom_kill_count: int | None = None


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


def _limit(value: int | None) -> int | None:
    return None if value is None or value >= _NO_LIMIT else value


def read_v1(cpuacct: Path | None, memory: Path | None, pids: Path | None) -> CgroupStats:
    now = time.time_ns()
    cpu = fsio.read_int(cpuacct / "cpuacct.usage") if cpuacct else None
    if memory is None:
        return CgroupStats(timestamp_ns=now, cpu_usage_ns=cpu,
                           pids_current=fsio.read_int(pids / "pids.current") if pids else None)
    usage = fsio.read_int(memory / "memory.usage_in_bytes")
    stat = fsio.read_keyed(memory / "memory.stat")
    oom = fsio.read_keyed(memory / "memory.oom_control")
    return CgroupStats(
        timestamp_ns=now,
        cpu_usage_ns=cpu,
        memory_usage_bytes=usage,
        # total_* include descendants (memory.use_hierarchy is always 1 on current kernels).
        memory_working_set_bytes=_working_set(usage, stat.get("total_inactive_file")),
        memory_rss_bytes=stat.get("total_rss"),
        memory_limit_bytes=_limit(fsio.read_int(memory / "memory.limit_in_bytes")),
        page_faults=stat.get("total_pgfault"),
        major_page_faults=stat.get("total_pgmajfault"),
        pids_current=fsio.read_int(pids / "pids.current") if pids else None,
        oom_kill_count=oom.get("oom_kill"),
    )


def read_v2(d: Path) -> CgroupStats:
    now = time.time_ns()
    cpu = fsio.read_keyed(d / "cpu.stat")
    stat = fsio.read_keyed(d / "memory.stat")
    usage = fsio.read_int(d / "memory.current")
    events = fsio.read_keyed(d / "memory.events")
    return CgroupStats(
        timestamp_ns=now,
        cpu_usage_ns=cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
        memory_usage_bytes=usage,
        memory_working_set_bytes=_working_set(usage, stat.get("inactive_file")),
        memory_rss_bytes=stat.get("anon"),
        memory_limit_bytes=_limit(fsio.read_int(d / "memory.max")),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        pids_current=fsio.read_int(d / "pids.current"),
        oom_kill_count=events.get("oom_kill"),
    )
