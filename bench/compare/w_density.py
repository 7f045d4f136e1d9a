"""Workloads 3 and 4: density (N pods running: memory, daemon CPU, list latency while 20% of the pods churn) and
restart (kill -9 the daemon with the pods running: time to the first successful ListContainers, and whether every
container kept running), the latter on the density pods of `profile.restart_pods`.

Density pods are host-network pods (the network is measured by the pod-start workload): what is compared here
is what each runtime keeps per pod. The same pods are made on each runtime in turn (cri-shim, then containerd,
for each size)."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cri_shim.api import api_pb2 as pb
from tests.harness.daemon import CriClient

from . import procs
from .context import Context, attempt
from .pods import Pod, PodMaker, churn, pull
from .stats import RUNTIMES, Dist, Figure, WorkloadResult
from .targets import Target

log = logging.getLogger("bench")

LIST_INTERVAL = 0.01      # seconds between list calls while pods churn (kubelet lists ~1/s; this is 100/s)
SETTLE = 2.0              # seconds after the last start before memory is read (shims finish their setup)
RESTART_TIMEOUT = 180.0


@dataclass
class SizeRun:
    """What one runtime showed with N pods."""

    numbers: dict[str, float] = field(default_factory=dict)
    lists: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    restart: dict[str, Any] = field(default_factory=dict)


def timed_call(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def list_once(client: CriClient, which: str) -> float:
    if which == "ListPodSandbox":
        return timed_call(lambda: client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30))
    return timed_call(lambda: client.runtime.ListContainers(pb.ListContainersRequest(), timeout=30))


def runtime_memory(target: Target, pods: list[Pod]) -> dict[str, Any]:
    """PSS of the runtime's processes (daemon, shims, containerd's pause) with the workload containers excluded."""
    workload = {p.container_id for p in pods}
    daemon = target.daemon_pid()
    members = procs.runtime_processes([daemon], target.markers(), workload)
    pss = {pid: procs.pss_kib(pid) for pid in members}
    by_command: dict[str, list[int]] = {}
    for pid, kib in pss.items():
        entry = by_command.setdefault(procs.read(pid, "comm").strip() or "?", [0, 0])
        entry[0] += 1
        entry[1] += kib
    total = sum(pss.values())
    workload_procs = [p for p in procs.pids() if procs.cgroup_leaf(p) in workload]
    return {"processes": len(members), "total_mib": total / 1024, "daemon_mib": pss.get(daemon, 0) / 1024,
            "per_pod_mib": total / 1024 / len(pods), "per_pod_without_daemon_mib": (total - pss.get(daemon, 0))
            / 1024 / len(pods), "by_command": {k: {"processes": v[0], "pss_mib": v[1] / 1024}
                                               for k, v in sorted(by_command.items())},
            "workload_processes_excluded": len(workload_procs)}


def runtime_cpu(target: Target, pods: list[Pod]) -> float:
    """CPU seconds of the runtime's live processes and the children they reaped (a shim's runc calls, the
    daemon's CNI plugins); a process that started and exited unreaped in between is missed."""
    members = procs.runtime_processes([target.daemon_pid()], target.markers(), {p.container_id for p in pods})
    return sum(procs.cpu_seconds_with_children(pid) for pid in members)


def cpu_during(pid: int, fn: Callable[[], None]) -> tuple[float, float]:
    """(daemon CPU seconds, wall seconds) spent while `fn` runs."""
    c0, t0 = procs.cpu_seconds(pid), time.perf_counter()
    fn()
    return procs.cpu_seconds(pid) - c0, time.perf_counter() - t0


def churn_while_listing(ctx: Context, target: Target, client: CriClient, pods: list[Pod],
                        run: SizeRun) -> list[Pod]:
    """Replace the first `churn_fraction` of the pods from another process while this one times lists."""
    count = max(1, round(len(pods) * ctx.profile.churn_fraction))
    doomed, kept = pods[:count], pods[count:]
    spawn = multiprocessing.get_context("spawn")
    daemon = target.daemon_pid()
    with spawn.Pool(1) as pool:
        pool.apply(time.sleep, (0,))     # the worker is up before the clock starts
        c0, t0 = procs.cpu_seconds(daemon), time.perf_counter()
        pending = pool.apply_async(churn, (target.endpoint, target.cgroup_base, str(ctx.work / "density-logs"),
                                           True, doomed))
        while not pending.ready():
            for which in ("ListPodSandbox", "ListContainers"):
                run.lists.setdefault(f"{which} during churn", []).append(list_once(client, which))
                time.sleep(LIST_INTERVAL)
        made = pending.get()
        wall = time.perf_counter() - t0
        run.numbers["churn_daemon_cpu_pct"] = (procs.cpu_seconds(daemon) - c0) / wall * 100
    run.numbers["churn_pods_per_s"] = count / wall
    run.numbers["churned_pods"] = count
    return kept + made


def check_all_running(client: CriClient, pods: list[Pod]) -> None:
    listed = {c.id: c.state for c in client.runtime.ListContainers(pb.ListContainersRequest(), timeout=60).containers}
    missing = [p.container_id[:12] for p in pods if listed.get(p.container_id) != pb.CONTAINER_RUNNING]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(pods)} containers are not listed as running: {missing[:5]}")


def measure_size(ctx: Context, target: Target, size: int, run: SizeRun,
                 after: Callable[[list[Pod]], None] | None) -> None:
    log.info("density: %d pods on %s", size, target.name)
    client = target.client()
    maker = PodMaker(client, target.cgroup_base, ctx.work / "density-logs", host_network=True)
    pods: list[Pod] = []
    try:
        pull(client)
        daemon = target.daemon_pid()

        def start_all() -> None:
            for _ in range(size):
                pods.append(maker.start()[0])
        before = runtime_cpu(target, pods)
        cpu, wall = cpu_during(daemon, start_all)
        run.numbers.update(start_all_s=wall, daemon_cpu_ms_per_start=cpu / size * 1000,
                           runtime_cpu_ms_per_start=(runtime_cpu(target, pods) - before) / size * 1000)
        time.sleep(SETTLE)
        run.memory = runtime_memory(target, pods)
        cpu, wall = cpu_during(daemon, lambda: time.sleep(ctx.profile.idle_window))
        run.numbers["idle_daemon_cpu_pct"] = cpu / wall * 100
        for _ in range(ctx.profile.quiet_list_calls):
            for which in ("ListPodSandbox", "ListContainers"):
                run.lists.setdefault(f"{which} quiet", []).append(list_once(client, which))
        pods[:] = churn_while_listing(ctx, target, client, pods, run)
        check_all_running(client, pods)
        if after is not None:
            after(pods)
            client.close()
            client = target.client()
            maker.client = client
    finally:
        t0 = time.perf_counter()
        for pod in pods:
            maker.teardown(pod)
        run.numbers["teardown_all_s"] = time.perf_counter() - t0
        client.close()


def workload_processes(pods: list[Pod]) -> dict[int, int]:
    ids = {p.container_id for p in pods}
    return {pid: procs.start_time(pid) for pid in procs.pids() if procs.cgroup_leaf(pid) in ids}


def first_list(endpoint: str, deadline: float) -> CriClient:
    """A fresh channel per try: a failed connect would otherwise put the channel into reconnect backoff (1 s+)."""
    while True:
        client = CriClient(endpoint)
        try:
            client.runtime.ListContainers(pb.ListContainersRequest(), timeout=5)
            return client
        except grpc.RpcError:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def restart(target: Target, pods: list[Pod], run: SizeRun) -> None:
    before = workload_processes(pods)
    if len(before) != len(pods):
        raise RuntimeError(f"found {len(before)} container processes for {len(pods)} pods before the kill")
    target.kill9()
    t0 = time.perf_counter()
    deadline = time.monotonic() + RESTART_TIMEOUT
    target.spawn()
    client = first_list(target.endpoint, deadline)
    first = time.perf_counter() - t0
    try:
        ids = {p.container_id for p in pods}
        while True:
            listed = client.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
            running = sum(1 for c in listed if c.id in ids and c.state == pb.CONTAINER_RUNNING)
            if running == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        complete = time.perf_counter() - t0
        ready = sum(1 for s in client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
                    if s.state == pb.SANDBOX_READY)
    finally:
        client.close()
    survived = sum(1 for pid, started in before.items() if procs.start_time(pid) == started)
    run.restart = {"pods": len(pods), "first_list_ms": first * 1000,
                   "all_running_ms": complete * 1000 if running == len(ids) else None,
                   "containers_listed_running": running, "container_processes_survived": survived,
                   "pods_ready": ready}


def list_percentile(key: str, q: int) -> Callable[[SizeRun], float | None]:
    def get(s: SizeRun) -> float | None:
        return Dist.of(s.lists[key]).ms(q) if s.lists.get(key) else None
    return get


def summarise(ctx: Context, density: WorkloadResult, runs: dict[int, dict[str, SizeRun]]) -> None:
    def fig(name: str, unit: str, get: Callable[[SizeRun], float | None]) -> Figure:
        return Figure(name, unit, {r: get(per[r]) if r in per and density.status[r] == "ok" else None
                                   for r in RUNTIMES})

    for size, per in runs.items():
        density.figures += [
            fig(f"{size} pods: runtime PSS per pod (daemon incl.)", "MiB", lambda s: s.memory.get("per_pod_mib")),
            fig(f"{size} pods: runtime PSS total", "MiB", lambda s: s.memory.get("total_mib")),
            fig(f"{size} pods: daemon PSS", "MiB", lambda s: s.memory.get("daemon_mib")),
            fig(f"{size} pods: PSS per pod without the daemon", "MiB",
                lambda s: s.memory.get("per_pod_without_daemon_mib")),
            fig(f"{size} pods: daemon CPU per pod start", "ms", lambda s: s.numbers.get("daemon_cpu_ms_per_start")),
            fig(f"{size} pods: runtime CPU per pod start (all processes)", "ms",
                lambda s: s.numbers.get("runtime_cpu_ms_per_start")),
            fig(f"{size} pods: daemon CPU idle", "% core", lambda s: s.numbers.get("idle_daemon_cpu_pct")),
            fig(f"{size} pods: daemon CPU during churn", "% core", lambda s: s.numbers.get("churn_daemon_cpu_pct")),
            fig(f"{size} pods: churn rate", "pods/s", lambda s: s.numbers.get("churn_pods_per_s")),
        ]
        for which in ("ListPodSandbox", "ListContainers"):
            for phase, qs in (("quiet", (99,)), ("during churn", (50, 99))):
                for q in qs:
                    key = f"{which} {phase}"
                    density.figures.append(fig(f"{size} pods: {key} p{q}", "ms", list_percentile(key, q)))
        density.figures += [fig(f"{size} pods: start all", "s", lambda s: s.numbers.get("start_all_s")),
                            fig(f"{size} pods: tear down all", "s", lambda s: s.numbers.get("teardown_all_s"))]
    density.raw = {str(size): {r: {"numbers": s.numbers, "memory": s.memory,
                                   "lists": {k: Dist.of(v).summary() for k, v in s.lists.items()}}
                               for r, s in per.items()} for size, per in runs.items()}
    p = ctx.profile
    density.notes += [
        "host-network pods, one container each (the pause look-alike); kubelet-style per-pod cgroup parents",
        "PSS = proportional set size (/proc/PID/smaps_rollup) of the daemon, its shims (cri-shim: zygote and pod "
        "shims; containerd: containerd-shim-runc-v2 and the pause process of each sandbox); workload containers "
        "excluded; kernel memory (namespaces, cgroups) not counted",
        f"churn: {p.churn_fraction:.0%} of the pods replaced one by one from a second process while this one "
        f"calls ListPodSandbox and ListContainers alternately, {LIST_INTERVAL * 1000:.0f} ms apart",
    ]


def restart_figures(restart_result: WorkloadResult, per: dict[str, SizeRun]) -> None:
    def fig(name: str, unit: str, key: str) -> Figure:
        return Figure(name, unit, {r: per[r].restart.get(key) if r in per and per[r].restart
                                   and restart_result.status[r] == "ok" else None for r in RUNTIMES})

    restart_result.figures = [fig("first successful ListContainers after exec", "ms", "first_list_ms"),
                              fig("all containers listed RUNNING after exec", "ms", "all_running_ms"),
                              fig("containers listed RUNNING", "count", "containers_listed_running"),
                              fig("container processes that kept running", "count", "container_processes_survived"),
                              fig("pods READY", "count", "pods_ready")]
    restart_result.raw = {r: s.restart for r, s in per.items()}
    restart_result.notes.append("kill -9 of the daemon process only; the clock starts when the new daemon is "
                                "exec'd; a fresh gRPC channel per try")


def run(ctx: Context) -> list[WorkloadResult]:
    p = ctx.profile
    density = ctx.new_result("density", f"density: {', '.join(map(str, p.density_sizes))} pods running")
    restart_result = ctx.new_result("restart", f"restart: kill -9 the daemon with {p.restart_pods} pods running")
    runs: dict[int, dict[str, SizeRun]] = {}
    for size in p.density_sizes:
        runs[size] = {}
        for runtime in RUNTIMES:
            target = ctx.targets[runtime]
            run = runs[size].setdefault(runtime, SizeRun())

            def after(pods: list[Pod], target: Target = target, run: SizeRun = run) -> None:
                attempt(restart_result, target.name, lambda: restart(target, pods, run))
            restart_here = after if size == p.restart_pods else None
            if not attempt(density, runtime, lambda: measure_size(ctx, target, size, run, restart_here)):
                runs[size].pop(runtime, None)
    summarise(ctx, density, runs)
    for r in RUNTIMES:
        ran = runs.get(p.restart_pods, {}).get(r)
        if restart_result.status[r] == "ok" and (ran is None or not ran.restart):
            restart_result.status[r] = (f"could not run: no density run with {p.restart_pods} pods completed on "
                                        f"{r} ({density.status[r]})")
    restart_figures(restart_result, runs.get(p.restart_pods, {}))
    return [density, restart_result]

