"""Workload 2: pod start and teardown over the gRPC API, sequentially, host-network and pod-network pods.

Start = RunPodSandbox + CreateContainer + StartContainer of one container (the pause look-alike); teardown =
StopPodSandbox + RemovePodSandbox. The pods of each runtime and variant are split into rounds run A B A B; a few
warm-up pods per runtime and variant are not counted. The same Python client drives both runtimes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .context import Context, interleave
from .pods import PodMaker, pull
from .stats import RUNTIMES, Dist, WorkloadResult, latency_figures
from .targets import Target

log = logging.getLogger("bench")

VARIANTS = (("host network", True), ("pod network", False))


def run_batch(target: Target, log_root: Path, host_network: bool, pods: int, into: dict[str, list[float]]) -> None:
    log.info("pod start: %d %s pods on %s", pods, "host-network" if host_network else "pod-network", target.name)
    client = target.client()
    try:
        maker = PodMaker(client, target.cgroup_base, log_root, host_network)
        for _ in range(pods):
            pod, start = maker.start()
            stop = maker.teardown(pod)
            into.setdefault("start", []).append(start.total)
            into.setdefault("teardown", []).append(stop.total)
            for call, seconds in (start.calls | stop.calls).items():
                into.setdefault(call, []).append(seconds)
    finally:
        client.close()


def warm_up(target: Target, log_root: Path, host_network: bool, pods: int) -> None:
    """Untimed pods first (page cache, first-call paths); a pod-network pod must get an address, else the
    variant would not measure a network at all."""
    client = target.client()
    try:
        pull(client)
        maker = PodMaker(client, target.cgroup_base, log_root, host_network)
        for _ in range(pods):
            pod, _ = maker.start()
            ip = maker.pod_ip(pod)
            maker.teardown(pod)
            if not host_network and not ip:
                raise RuntimeError("a pod-network pod got no IP address")
    finally:
        client.close()


def run(ctx: Context) -> WorkloadResult:
    p = ctx.profile
    result = ctx.new_result("podstart", f"pod start/teardown, {p.podstart_pods} sequential pods per variant (ms)")
    samples: dict[str, dict[str, dict[str, list[float]]]] = {}
    per_round = -(-p.podstart_pods // p.podstart_rounds)
    for label, host_network in VARIANTS:
        per_runtime: dict[str, dict[str, list[float]]] = {name: {} for name in RUNTIMES}
        samples[label] = per_runtime
        log_root = ctx.work / "podstart-logs"

        def step(target: Target, r: int, host_network: bool = host_network,
                 per_runtime: dict[str, dict[str, list[float]]] = per_runtime) -> None:
            if r == 0:
                warm_up(target, log_root, host_network, p.podstart_warmup)
            done = len(per_runtime[target.name].get("start", []))
            run_batch(target, log_root, host_network, min(per_round, p.podstart_pods - done),
                      per_runtime[target.name])

        interleave(ctx, result, p.podstart_rounds, step)
        for what in ("start", "teardown"):
            dists = {name: Dist.of(per_runtime[name].get(what, [])) for name in RUNTIMES
                     if result.status[name] == "ok"}
            result.figures += latency_figures(f"{label}: {what}", dists)
    result.notes.append("start = RunPodSandbox+CreateContainer+StartContainer; teardown = StopPodSandbox+"
                        "RemovePodSandbox; pod network = the same CNI bridge conflist for both (bridge + "
                        "host-local + portmap, no masquerade)")
    raw: dict[str, Any] = {}
    for label, per_runtime in samples.items():
        raw[label] = {name: {call: Dist.of(v).summary() for call, v in calls.items()}
                      for name, calls in per_runtime.items()}
    result.raw = raw
    return result
