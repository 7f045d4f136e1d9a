"""The machine and the versions a run measured, for the results file and the README."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> str:
    if not shutil.which(argv[0]) and not Path(argv[0]).exists():
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"


def cgroup_mode() -> str:
    """unified (v2 only), hybrid (v1 controllers + a v2 mount at /sys/fs/cgroup/unified) or legacy (v1 only)."""
    mounts = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    if mounts.get("/sys/fs/cgroup") == "cgroup2":
        return "unified (v2)"
    if mounts.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)"
    return "legacy (v1)"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def describe(critest: Path) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cgroup_mode": cgroup_mode(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_gib(), 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "python": platform.python_version(),
            "cri-shim commit": _run("git", "rev-parse", "--short", "HEAD"),
            "containerd": _run("containerd", "--version"),
            "runc": _run("runc", "--version"),
            "critest": _run(str(critest), "-version"),
            "crictl": _run("crictl", "--version"),
            "cni plugins": _run("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"),
        },
    }


def one_line(m: dict[str, Any]) -> str:
    return (f"{m['date']}, kernel {m['kernel']}, cgroup {m['cgroup_mode']}, {m['cpus']} CPUs ({m['cpu_model']}), "
            f"{m['memory_gib']} GiB, load at start {m['load_average_at_start']}")
