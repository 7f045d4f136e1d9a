"""Native Linux runtime benchmark: `python -m bench.runtime [--runs 100] [--pods 50]` (root).

Prints, for the same machine and the same run:
- pod shim start (LinuxBackend.create_sandbox, host network), p50/p99;
- container create+start in an existing pod (LinuxBackend.create_container + start_container), p50/p99;
- `runc create` + `runc start` of the very same bundle (Debian's runc; the overlay rootfs mounted on the host
  beforehand and not timed), p50/p99, and the ratio of our p50 to runc's;
- per-pod PSS (proportional set size, /proc/PID/smaps_rollup) of the runtime's processes (pod shims, the
  zygote's share, pod init processes) with N pods each running one container, after each pod answered the
  status and stats calls kubelet makes all the time; then again with the kernel's
  samepage merging running (KSM; the bench starts it and puts it back as it was), which merges the pages
  the shims marked mergeable (runtime.ksm = "mark", the default).

Writing config.json is the daemon's job and is not timed; stop/delete between runs is not timed either.
Everything lives under one temporary directory and cgroups named "cri-shim-bench-*"; all is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from runtime import base, oci
from runtime.linux.backend import LinuxBackend
from tests.harness.linux_lab import Lab, PodInfo
from tests.harness.rootfs import build_busybox_rootfs

RUNC = shutil.which("runc") or "/usr/sbin/runc"


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def line(name: str, samples: list[float]) -> str:
    return f"{name:<44} n={len(samples):<4} p50={pct(samples, 50):7.2f} ms  p99={pct(samples, 99):7.2f} ms"


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


def pss_kib(pid: int) -> int:
    try:
        for row in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if row.startswith("Pss:"):
                return int(row.split()[1])
    except OSError:
        pass
    return 0


def children_named(comm: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    out.append(int(pid))
            except OSError:
                pass
    return out


class Bench:
    def __init__(self, lab: Lab, runs: int, pods: int, runc: bool) -> None:
        self.lab, self.runs, self.pods, self.use_runc = lab, runs, pods, runc

    async def shim_start(self, b: LinuxBackend) -> list[float]:
        samples = []
        for _ in range(self.runs):
            spec, _info = self.lab.pod_spec(network=base.NamespaceMode.NODE)
            samples.append(await timed(lambda: b.create_sandbox(spec)))
            await b.remove_sandbox(spec.id)
        return samples

    async def container_start(self, b: LinuxBackend, pod: PodInfo) -> tuple[list[float], list[float]]:
        ours: list[float] = []
        runc: list[float] = []
        for i in range(self.runs):
            cid = f"{i:064x}"
            info = self.lab.container_paths(pod, cid)
            oci.write(info.bundle, self.lab.container_spec(pod, cid, ("sleep", "100")))
            spec = base.ContainerSpec(
                id=cid, sandbox_id=pod.id, bundle_dir=str(info.bundle),
                rootfs=base.RootfsSpec(layers=(str(self.lab.rootfs),), scratch=str(info.scratch)),
                stdio=base.StdioSpec(log_path=str(info.log_path)))

            async def create_start() -> None:
                await b.create_container(spec)
                await b.start_container(cid)
            # Interleaved, alternating who goes first, so both see the same machine moment to moment.
            if self.use_runc and i % 2:
                runc.append(self.runc_once(info.bundle, info.scratch, f"r{i}"))
            ours.append(await timed(create_start))
            await b.stop_container(cid, 0)
            await b.delete_container(cid)
            if self.use_runc and not i % 2:
                runc.append(self.runc_once(info.bundle, info.scratch, f"r{i}"))
        return ours, runc

    def runc_once(self, bundle: Path, scratch: Path, name: str) -> float:
        rootfs = bundle / "rootfs"
        upper, work = scratch / "ru", scratch / "rw"
        for d in (rootfs, upper, work):
            d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.lab.rootfs},upperdir={upper},workdir={work}", str(rootfs)], check=True)
        state = self.lab.root / "runc-state"
        # runc's container init inherits stdio: a file, never a pipe (nothing would ever close it).
        with open(self.lab.root / "runc.log", "ab") as out:
            try:
                t0 = time.perf_counter()
                subprocess.run([RUNC, "--root", str(state), "create", "--bundle", str(bundle), name], check=True,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60)
                subprocess.run([RUNC, "--root", str(state), "start", name], check=True, stdin=subprocess.DEVNULL,
                               stdout=out, stderr=out, timeout=60)
                elapsed = (time.perf_counter() - t0) * 1000
            finally:
                self._runc_cleanup(state, name, rootfs, upper, work)
        return elapsed

    def _runc_cleanup(self, state: Path, name: str, rootfs: Path, upper: Path, work: Path) -> None:
        subprocess.run([RUNC, "--root", str(state), "delete", "-f", name], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["umount", str(rootfs)], check=False)
        shutil.rmtree(upper, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    async def start_pods(self, b: LinuxBackend) -> list[PodInfo]:
        pods = [await self.lab.pod(b, network=base.NamespaceMode.NODE) for _ in range(self.pods)]
        containers = [await self.lab.container(b, pod, ("sleep", "1000")) for pod in pods]
        await asyncio.sleep(1.0)
        # What kubelet asks of every pod all the time: the shims run these paths in steady state.
        for pod, c in zip(pods, containers):
            await b.sandbox_status(pod.id)
            await b.container_status(c.id)
            await b.container_stats(c.id)
            await b.sandbox_stats(pod.id)
        return pods

    def pss(self, pods: list[PodInfo]) -> dict[str, float]:
        shims = [p.status.monitor_pid or 0 for p in pods]
        zygote = children_named("cri-shim-zygote")
        shim_kib = sum(pss_kib(p) for p in shims)
        zygote_kib = sum(pss_kib(p) for p in zygote)
        return {"pods": len(pods), "shim_total_mib": shim_kib / 1024, "zygote_mib": zygote_kib / 1024,
                "per_pod_mib": (shim_kib + zygote_kib) / 1024 / len(pods),
                "shim_rss_mib": sum(_rss_kib(p) for p in shims) / 1024 / len(pods)}


KSM = Path("/sys/kernel/mm/ksm")


async def with_ksm_running(measure: Callable[[], dict[str, float]], limit: float = 300.0) -> dict[str, float]:
    """Measure once the kernel's samepage merging (default scan rate) has settled: two full scans after it
    started and no change in merged pages over the last one. KSM is put back as it was (merges undone)."""
    before = (KSM / "run").read_text().strip()
    (KSM / "run").write_text("1")
    try:
        start_scans = int((KSM / "full_scans").read_text())
        started, cpu_before = time.monotonic(), ksmd_cpu_seconds()
        deadline = started + limit
        last = -1
        while time.monotonic() < deadline:
            await asyncio.sleep(5)
            scans = int((KSM / "full_scans").read_text()) - start_scans
            sharing = int((KSM / "pages_sharing").read_text())
            if scans >= 2 and sharing == last:
                break
            last = sharing
        # ksmd's share of one CPU while it merged and kept scanning (what a node running KSM pays)
        ksmd_pct = 100 * (ksmd_cpu_seconds() - cpu_before) / (time.monotonic() - started)
        return {**measure(), "ksmd_cpu_pct": ksmd_pct}
    finally:
        if before != "1":
            (KSM / "run").write_text("2")      # stop and undo the merges...
            (KSM / "run").write_text(before)   # ...then as it was


def ksmd_cpu_seconds() -> float:
    """CPU time (user + system) of the kernel's KSM thread so far; 0 without one."""
    for pid in children_named("ksmd"):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _rss_kib(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    return 0


async def main_async(args: argparse.Namespace, lab: Lab) -> None:
    bench = Bench(lab, args.runs, args.pods, runc=not args.skip_runc and os.path.exists(RUNC))
    b = lab.backend()
    try:
        print(f"# cri-shim native runtime bench: runs={args.runs} pods={args.pods} kernel={os.uname().release}")
        zygote_ms = await timed(b.start)
        print(f"{'shim zygote start (once per daemon)':<44} {zygote_ms:7.2f} ms")
        shim = await bench.shim_start(b)
        print(line("pod shim start (create_sandbox)", shim))
        pod = await lab.pod(b)
        ours, runc = await bench.container_start(b, pod)
        print(line("container create+start (cri-shim)", ours))
        if runc:
            print(line("container create+start (runc create+start)", runc))
            print(f"{'ratio cri-shim / runc (p50)':<44} {pct(ours, 50) / pct(runc, 50):.2f}x  (target <= 0.30x)")
        await b.remove_sandbox(pod.id)
        lab.pods.remove(pod)
        if args.pods:
            pods = await bench.start_pods(b)
            pss = bench.pss(pods)
            print(f"{'per-pod PSS (shim + zygote share)':<44} {pss['per_pod_mib']:.2f} MiB over {pss['pods']} pods "
                  f"(shims {pss['shim_total_mib']:.1f} MiB, zygote {pss['zygote_mib']:.1f} MiB; "
                  f"shim RSS {pss['shim_rss_mib']:.1f} MiB each; target <= 1.9 MiB)")
            if KSM.is_dir() and not args.skip_ksm:
                merged = await with_ksm_running(lambda: bench.pss(pods))
                print(f"{'per-pod PSS, KSM running (runtime.ksm=mark)':<44} {merged['per_pod_mib']:.2f} MiB "
                      f"(shims {merged['shim_total_mib']:.1f} MiB, zygote {merged['zygote_mib']:.1f} MiB; "
                      f"ksmd {merged['ksmd_cpu_pct']:.1f} % of one CPU meanwhile)")
    finally:
        await lab.remove_pods(b)
        await b.close()
        remove_unified_tree(lab.cgroup_base)


def remove_unified_tree(cgroup_base: str) -> None:
    """runc also makes its cgroups in the (controller-less) unified hierarchy of a hybrid host."""
    top = Path("/sys/fs/cgroup/unified") / cgroup_base.lstrip("/")
    if top.is_dir():
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        top.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--skip-runc", action="store_true")
    parser.add_argument("--skip-ksm", action="store_true", help="no PSS measurement with KSM running")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.runtime needs root")
    base_dir = Path(os.environ.get("CRI_SHIM_TEST_TMP", "/tmp/cst-bench"))
    base_dir.mkdir(parents=True, exist_ok=True)
    rootfs = build_busybox_rootfs(Path(tempfile.mkdtemp(prefix="bench-rootfs-", dir=base_dir)))
    lab = Lab(rootfs, name="bench")
    try:
        asyncio.run(main_async(args, lab))
    finally:
        left = lab.leftovers()
        lab.close()
        shutil.rmtree(rootfs, ignore_errors=True)
        if left:
            print(f"# WARNING: left behind: {left}")


if __name__ == "__main__":
    main()
