"""cAdvisor-style usage numbers of one container, read from its cgroup and its processes' /proc entries.

What the CRI metrics RPCs (ListPodSandboxMetrics) report: the values
kubelet's cAdvisor stats provider would export as `container_*` series. Only
what the kernel really provides here is returned; a file that does not exist
on this host (a controller not mounted, cgroup v1 vs v2) leaves its metric out
rather than inventing a zero.

Reads only: cgroup files below the container's cgroup, /proc/<pid>/{status,
fd,net/dev} of the container's processes, and statvfs of the writable layer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.linux.cgroups import fsio, open_hierarchy

USER_HZ = os.sysconf("SC_CLK_TCK")
NO_LIMIT = 1 << 62
NET_FIELDS = ("receive_bytes", "receive_packets", "receive_errors", "receive_packets_dropped",
              "transmit_bytes", "transmit_packets", "transmit_errors", "transmit_packets_dropped")


@dataclass
class ContainerSample:
    timestamp_ns: int
    values: dict[str, int] = field(default_factory=dict)            # metric name (without "container_") -> value
    memory_failures: dict[tuple[str, str], int] = field(default_factory=dict)   # (failure_type, scope) -> count
    interfaces: dict[str, dict[str, int]] = field(default_factory=dict)          # interface -> NET_FIELDS values
    fs_device: str = ""


def _limit(value: int | None) -> int | None:
    return None if value is None or value >= NO_LIMIT else value


def _put(out: dict[str, int], name: str, value: int | None) -> None:
    if value is not None:
        out[name] = max(0, int(value))


def _cpu(v: dict[str, int], cpuacct: Path | None, cpu: Path | None) -> None:
    if cpuacct is not None:
        usage = fsio.read_int(cpuacct / "cpuacct.usage")
        _put(v, "cpu_usage_seconds_total", None if usage is None else usage // 1_000_000_000)
        ticks = fsio.read_keyed(cpuacct / "cpuacct.stat")
        _put(v, "cpu_user_seconds_total", ticks["user"] // USER_HZ if "user" in ticks else None)
        _put(v, "cpu_system_seconds_total", ticks["system"] // USER_HZ if "system" in ticks else None)
    if cpu is not None:
        stat = fsio.read_keyed(cpu / "cpu.stat")
        _put(v, "cpu_cfs_periods_total", stat.get("nr_periods"))
        _put(v, "cpu_cfs_throttled_periods_total", stat.get("nr_throttled"))
        throttled = stat.get("throttled_time")
        _put(v, "cpu_cfs_throttled_seconds_total", None if throttled is None else throttled // 1_000_000_000)
        _put(v, "spec_cpu_period", fsio.read_int(cpu / "cpu.cfs_period_us"))
        _put(v, "spec_cpu_shares", fsio.read_int(cpu / "cpu.shares"))
        quota = fsio.read_int(cpu / "cpu.cfs_quota_us")
        _put(v, "spec_cpu_quota", quota if quota is not None and quota > 0 else None)


def _memory(s: ContainerSample, memory: Path | None) -> None:
    if memory is None:
        return
    v = s.values
    stat = fsio.read_keyed(memory / "memory.stat")
    usage = fsio.read_int(memory / "memory.usage_in_bytes")
    _put(v, "memory_usage_bytes", usage)
    _put(v, "memory_max_usage_bytes", fsio.read_int(memory / "memory.max_usage_in_bytes"))
    _put(v, "memory_cache", stat.get("total_cache"))
    _put(v, "memory_rss", stat.get("total_rss"))
    _put(v, "memory_mapped_file", stat.get("total_mapped_file"))
    _put(v, "memory_swap", stat.get("total_swap", 0))
    _put(v, "memory_failcnt", fsio.read_int(memory / "memory.failcnt"))
    _put(v, "memory_kernel_usage", fsio.read_int(memory / "memory.kmem.usage_in_bytes"))
    if usage is not None:
        _put(v, "memory_working_set_bytes", usage - stat.get("total_inactive_file", 0))
    _put(v, "spec_memory_limit_bytes", _limit(fsio.read_int(memory / "memory.limit_in_bytes")) or 0)
    _put(v, "spec_memory_swap_limit_bytes", _limit(fsio.read_int(memory / "memory.memsw.limit_in_bytes")) or 0)
    _put(v, "oom_events_total", fsio.read_keyed(memory / "memory.oom_control").get("oom_kill"))
    for kind, key in (("pgfault", "total_pgfault"), ("pgmajfault", "total_pgmajfault")):
        if key in stat:
            s.memory_failures[(kind, "container")] = stat[key]
            s.memory_failures[(kind, "hierarchy")] = stat[key]


def _processes(s: ContainerSample, pids: list[int], pids_dir: Path | None) -> None:
    v = s.values
    threads = fds = sockets = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            threads += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), 0)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                fds += 1
                try:
                    sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                except OSError:
                    pass
        except OSError:
            continue   # the process ended while we looked
    v["processes"] = len(pids)
    v["threads"] = threads
    v["file_descriptors"] = fds
    v["sockets"] = sockets
    if pids_dir is not None:
        text = fsio.read(pids_dir / "pids.max").strip() if (pids_dir / "pids.max").exists() else ""
        v["threads_max"] = int(text) if text.isdigit() else 0


def _network(s: ContainerSample, pids: list[int]) -> None:
    """Per-interface counters of the network namespace the container's processes are in (loopback excluded)."""
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
        except OSError:
            continue
        for line in lines:
            name, _, rest = line.partition(":")
            name, cols = name.strip(), rest.split()
            if name == "lo" or len(cols) < 12:
                continue
            rx, tx = [int(c) for c in cols[0:4]], [int(c) for c in cols[8:12]]
            s.interfaces[name] = dict(zip(NET_FIELDS, (*rx, *tx)))
        return


def _filesystem(s: ContainerSample, writable_dir: str) -> None:
    try:
        st = os.statvfs(writable_dir)
        dev = os.stat(writable_dir).st_dev
    except OSError:
        return
    s.fs_device = f"{os.major(dev)}:{os.minor(dev)}"
    s.values["fs_inodes_free"] = st.f_favail
    s.values["fs_inodes_total"] = st.f_files
    s.values["fs_limit_bytes"] = st.f_blocks * st.f_frsize


def sample_container(cgroups_path: str, writable_dir: str = "") -> ContainerSample:
    """Everything above for the container whose cgroup (cgroupfs path) is `cgroups_path`."""
    cg = open_hierarchy().cgroup(cgroups_path)
    sample = ContainerSample(timestamp_ns=time.time_ns())
    _cpu(sample.values, cg.dir("cpuacct"), cg.dir("cpu"))
    _memory(sample, cg.dir("memory"))
    pids = cg.pids()
    _processes(sample, pids, cg.dir("pids"))
    _network(sample, pids)
    if writable_dir:
        _filesystem(sample, writable_dir)
    return sample
