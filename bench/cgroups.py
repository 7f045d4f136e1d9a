"""What the cgroups library costs on this host: stats() and friends per call, and a cgroup's life.

    CRI_SHIM_TEST_TMP=/tmp/cst-x python -m bench.cgroups [-n 2000]

Run as root. Makes one cgroup under /cri-shim-bench-<test base name>-<random> and removes it.
Prints microseconds per call (timeit, best of 5 repeats); numbers only, no assertion.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import timeit
from pathlib import Path

from runtime.linux.cgroups import Cgroup, cgroup_path, open_hierarchy

RESOURCES = {"cpu": {"shares": 512, "quota": 50000, "period": 100000},
             "memory": {"limit": 256 << 20, "swap": 256 << 20}, "pids": {"limit": 100},
             "devices": [{"allow": False, "access": "rwm"}]}


def per_call_us(n: int, fn: object) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6  # type: ignore[arg-type]


def lifecycle(parent: Cgroup, i: int) -> None:
    cg = parent.hierarchy.cgroup(cgroup_path("cgroupfs", parent.path, f"c{i}"))
    cg.create()
    cg.apply(RESOURCES)
    cg.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    h = open_hierarchy()
    tag = Path(os.environ.get("CRI_SHIM_TEST_TMP", "/tmp/cst-tests")).name
    parent = h.cgroup(f"/cri-shim-bench-{tag}-{secrets.token_hex(3)}")
    parent.create()
    try:
        cg = h.cgroup(parent.path + "/busy")
        cg.create()
        cg.apply(RESOURCES)
        env = {**os.environ, "CST_PROCS": " ".join(cg.procs_files())}
        proc = subprocess.Popen(["sh", "-c", 'for f in $CST_PROCS; do echo $$ > "$f"; done; exec sleep 600',
                                 "sh"], env=env)
        try:
            print(f"mode {h.mode.value}; {args.n} calls each, best of 5")
            print(f"stats()              {per_call_us(args.n, cg.stats):8.1f} us/call")
            print(f"oom_kill_count()     {per_call_us(args.n, cg.oom_kill_count):8.1f} us/call")
            print(f"pids()               {per_call_us(args.n, cg.pids):8.1f} us/call")
            counter = iter(range(10**9))
            life = per_call_us(max(args.n // 20, 20), lambda: lifecycle(parent, next(counter)))
            print(f"create+apply+destroy {life / 1000:8.2f} ms/cgroup ({len(h.mounts)} hierarchies)")
        finally:
            proc.kill()
            proc.wait()
    finally:
        parent.destroy()


if __name__ == "__main__":
    main()
