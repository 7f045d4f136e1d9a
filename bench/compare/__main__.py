"""cri-shim against containerd on the same machine, in one run.

    CRI_SHIM_TEST_TMP=/tmp/cst-bench .venv/bin/python -m bench.compare [--smoke] [--only podstart,pull]

Workloads (each on both runtimes, interleaved A B A B): critest -benchmark; pod start (200 sequential pods, host
and pod network); density (110 and 500 pods: memory, daemon CPU, lists while 20% churn); restart (kill -9 with
110 pods); cold pull of a 5-layer ~200 MB image. Prints a table per workload (cri-shim, containerd, ratio
cri-shim/containerd) and writes everything, with the machine and versions, to bench/results/<date>-<mode>.json.

Exit status: 0 when every workload ran or honestly could not run (e.g. containerd not installed: "could not
run: <why>"); 1 when a workload failed on a runtime that was available, or something was left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import leaks, testimages
from tests.harness.daemon import REPO, TMP_BASE, make_workdir
from tests.harness.lifecycle_env import BUSYBOX, Mirror, start_mirror

from . import machine, w_critest, w_density, w_podstart, w_pull
from .context import Context, describe_error
from .profile import FULL, PROFILES, Profile, with_overrides
from .stats import RUNTIMES, WorkloadResult, table
from .targets import CGROUP_ROOT, Target, Unavailable, bench_cgroup_root, make_targets, remove_cgroup_tree

log = logging.getLogger("bench")

RESULTS = REPO / "bench" / "results"
CRITEST = REPO / "bin" / "critest"
IMAGES = (BUSYBOX, *testimages.PAUSE, *w_critest.LISTING_IMAGES)
# Top-level cgroups containerd makes for pods that come without a parent (critest asks for /test.slice when the
# runtime does not answer RuntimeConfig, which containerd 1.6 does not).
FOREIGN_CGROUPS = ("test.slice", "k8s.io")


def emit(text: str) -> None:
    """The program's output (the tables), as opposed to its progress log on stderr."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_workloads(ctx: Context, names: list[str]) -> list[WorkloadResult]:
    runners: dict[str, Callable[[Context], WorkloadResult | list[WorkloadResult]]] = {
        "critest": w_critest.run, "podstart": w_podstart.run, "density": w_density.run, "pull": w_pull.run}
    results: list[WorkloadResult] = []
    for name in names:
        started = time.monotonic()
        log.info("workload %s: starting", name)
        out = runners[name](ctx)
        for r in out if isinstance(out, list) else [out]:
            r.elapsed_s = time.monotonic() - started
            emit(table(r) + "\n")
            results.append(r)
    return results


def start_targets(targets: dict[str, Target]) -> dict[str, str]:
    available = {}
    for name, target in targets.items():
        try:
            target.start()
            available[name] = "ok"
        except Unavailable as e:
            available[name] = f"could not run: {e}"
        except Exception as e:
            log.exception("%s did not start", name)
            available[name] = f"failed: {name} did not start: {describe_error(e)}"
    return available


def top_cgroups() -> set[str]:
    return {f"{h.name}/{d.name}" for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink()
            for d in h.iterdir() if d.is_dir()}


def tidy_foreign_cgroups(before: set[str]) -> list[str]:
    """Remove the empty top-level cgroups containerd made during this run; name those it could not remove."""
    names = {entry.split("/", 1)[1] for entry in top_cgroups() - before}
    left: list[str] = []
    for name in sorted(names & set(FOREIGN_CGROUPS)):
        left += remove_cgroup_tree(f"/{name}")
    return left


def own_netns(paths: list[str], subnets: list[str]) -> list[str]:
    """The network namespaces among `paths` holding an address of one of `subnets` (this run's pods). Other
    network namespaces that appeared meanwhile belong to whatever else runs on this machine."""
    nets = [ipaddress.ip_network(s) for s in subnets]
    mine = []
    for path in paths:
        out = subprocess.run(["ip", "-n", Path(path).name, "-4", "-o", "addr"], capture_output=True, text=True)
        addrs = [ipaddress.ip_interface(w).ip for line in out.stdout.splitlines() for w in line.split()[3:4]]
        if any(a in n for a in addrs for n in nets):
            mine.append(path)
    return mine


def left_behind(before: leaks.Snapshot, targets: dict[str, Target], settle: float = 10.0) -> dict[str, list[str]]:
    """What this run made and did not remove. Mounts, processes, cgroups and dirs are matched by the test base
    dir (as in the test suite's leak check); host-wide links and netns only when they are recognisably ours
    (our bridges; namespaces with an address of our subnets), since other suites may run at the same time."""
    bridges = {t.bridge for t in targets.values()}
    subnets = [t.subnet for t in targets.values()]
    deadline = time.monotonic() + settle
    while True:
        diff = leaks.snapshot(TMP_BASE).new_since(before)
        if "links" in diff:
            diff["links"] = [link for link in diff["links"] if link in bridges]
        if "netns" in diff:
            diff["netns"] = own_netns(diff["netns"], subnets)
        diff = {k: v for k, v in diff.items() if v}
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.25)


def could_not_run(names: list[str], why: str) -> list[WorkloadResult]:
    return [WorkloadResult(n, n, status={r: f"could not run: {why}" for r in RUNTIMES}) for n in names]


def write_results(profile: Profile, info: dict[str, Any], results: list[WorkloadResult],
                  problems: list[str], left: dict[str, list[str]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}-{profile.name}.json"
    doc = {"profile": profile.name, "settings": dataclasses.asdict(profile), "machine": info, "workloads": [r.as_json() for r in results],
           "problems": problems, "left_behind": left}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    latest = RESULTS / f"latest-{profile.name}.json"
    latest.unlink(missing_ok=True)
    latest.symlink_to(path.name)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a few iterations of each workload (make bench-smoke)")
    ap.add_argument("--only", default="critest,podstart,density,pull",
                    help="comma-separated workloads: critest, podstart, density (includes restart), pull")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change one setting of the profile (bench/compare/profile.py), e.g. density_sizes=110")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        profile = with_overrides(PROFILES["smoke"] if args.smoke else FULL, args.set)
    except ValueError as e:
        ap.error(str(e))
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("critest", "podstart", "density", "pull")]
    if unknown:
        ap.error(f"--only: unknown workload(s) {unknown}")

    info = machine.describe(CRITEST)
    emit(f"# cri-shim vs containerd, {profile.name} run: {machine.one_line(info)}")
    if os.geteuid() != 0:
        skipped = could_not_run(names, "needs root (namespaces, cgroups, mounts)")
        for r in skipped:
            emit(table(r) + "\n")
        write_results(profile, info, skipped, [], {})
        return 0

    before = leaks.snapshot(TMP_BASE)
    cgroups_before = top_cgroups()
    problems: list[str] = []
    results: list[WorkloadResult] = []
    mirror: Mirror | None = None
    targets: dict[str, Target] = {}
    work = make_workdir("bench-")
    started = time.monotonic()
    try:
        if not shutil.which("docker-registry"):
            results = could_not_run(names, "docker-registry is not installed (make deps)")
        else:
            mirror = start_mirror(IMAGES)
            targets = make_targets(mirror.hosts, mirror.registry.host)
            available = start_targets(targets)
            ctx = Context(targets, profile, work, mirror.registry.host, CRITEST, available)
            results = run_workloads(ctx, names)
    finally:
        for name, target in targets.items():
            try:
                problems += [f"{name}: {p}" for p in target.stop()]
            except Exception as e:
                log.exception("stopping %s", name)
                problems.append(f"{name}: stop failed: {describe_error(e)}")
        if mirror is not None:
            mirror.close()
        shutil.rmtree(work, ignore_errors=True)
        remove_cgroup_tree(bench_cgroup_root())
        problems += [f"top-level cgroup left: {c}" for c in tidy_foreign_cgroups(cgroups_before)]
    left = left_behind(before, targets)
    elapsed = time.monotonic() - started

    emit(f"# summary ({profile.name} run, {elapsed / 60:.1f} min): {machine.one_line(info)}")
    for r in results:
        emit(table(r) + "\n")
    for p in problems:
        emit(f"PROBLEM: {p}")
    if left:
        emit(f"LEFT BEHIND: {left}")
    info["elapsed_s"] = elapsed
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_results(profile, info, results, problems, left)
    emit(f"# results: {path}")
    failed = [f"{r.key} on {rt}" for r in results for rt, s in r.status.items() if s.startswith("failed")]
    if failed:
        emit(f"# FAILED: {', '.join(failed)}")
    return 1 if failed or problems or left else 0


if __name__ == "__main__":
    sys.exit(main())
