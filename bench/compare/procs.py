"""What the runtimes' processes cost, read from /proc: PSS, CPU time, and which processes belong to a runtime."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def read(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
    except OSError:   # the process exited meanwhile
        return ""


def cmdline(pid: int) -> str:
    return read(pid, "cmdline").replace("\0", " ").strip()


def pss_kib(pid: int) -> int:
    """Proportional set size: private pages plus each shared page divided by the number of its sharers, so a
    sum over processes counts shared code once."""
    for row in read(pid, "smaps_rollup").splitlines():
        if row.startswith("Pss:"):
            return int(row.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads), 0 if it is gone."""
    stat = read(pid, "stat")
    if not stat:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds_with_children(pid: int) -> float:
    """CPU time of the process and of its children it has waited for (runc, CNI plugins, helpers)."""
    stat = read(pid, "stat")
    if not stat:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def start_time(pid: int) -> int:
    """Start time in clock ticks since boot: with the pid, identifies one process (pids are reused)."""
    stat = read(pid, "stat")
    return int(stat[stat.rindex(")") + 2:].split()[19]) if stat else -1


def parent_map() -> dict[int, int]:
    out = {}
    for pid in pids():
        stat = read(pid, "stat")
        if stat:
            out[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def cgroup_leaf(pid: int) -> str:
    """Last component of the process's cgroup path (a v1 hierarchy with controllers, else the v2 line)."""
    lines = read(pid, "cgroup").splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers and "name=" not in controllers:
            return path.rstrip("/").rsplit("/", 1)[-1]
    return lines[0].rsplit("/", 1)[-1] if lines else ""


def runtime_processes(roots: Iterable[int], markers: Iterable[str], workload_ids: set[str]) -> list[int]:
    """The processes of one runtime: `roots`, every process whose command line names one of `markers` (its
    private directories: that catches shims that were re-parented to init), and all their descendants, except
    processes in the cgroup of a workload container (a cgroup path ending in one of `workload_ids`). containerd's
    pause processes are in the sandbox's cgroup, so they count as the runtime's."""
    marks = [m for m in markers if m]
    parents = parent_map()
    me = os.getpid()
    seeds = {p for p in roots if p in parents}
    seeds |= {p for p in parents if p != me and any(m in cmdline(p) for m in marks)}
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(seeds)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return sorted(p for p in found if cgroup_leaf(p) not in workload_ids)
