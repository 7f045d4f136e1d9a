"""Pod start and teardown latency, and list latency with many pods, through the CRI (prints numbers).

    CRI_SHIM_TEST_TMP=/tmp/cst-bench python -m bench.lifecycle [--pods 200] [--list-pods 500] [--containerd]

- start: RunPodSandbox + CreateContainer + StartContainer of one container (the pause look-alike), sequentially, p50/p99;
- teardown: StopPodSandbox + RemovePodSandbox (which removes the container), p50/p99;
- list: ListContainers and ListPodSandbox p50/p99 with `--list-pods` pods running one container each.

By default both runtimes get host-network pods, so no CNI plugin time is in either number; `--pod-network`
adds a run with pod networks (CNI bridge plugin on both: the same plugins, each runtime its own bridge). The
same Python gRPC client drives both; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cri_shim.api import api_pb2 as pb
from tests.harness import testimages
from tests.harness.daemon import REPO, CriClient
from tests.harness.lifecycle_env import BUSYBOX, Mirror, lifecycle_daemon, start_mirror

WORKLOAD = testimages.PAUSE[0]


@dataclass
class Samples:
    name: str
    seconds: list[float]

    def pct(self, p: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    def line(self) -> str:
        return (f"{self.name:<34} n={len(self.seconds):<5} p50={self.pct(50) * 1000:8.2f}ms "
                f"p99={self.pct(99) * 1000:8.2f}ms mean={statistics.mean(self.seconds) * 1000:8.2f}ms")


def _pod(host_network: bool) -> pb.PodSandboxConfig:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=name))
    if host_network:
        cfg.linux.security_context.namespace_options.network = pb.NODE  # and the host's name (no UTS ns)
    else:
        cfg.hostname = name
    return cfg


def _container() -> pb.ContainerConfig:
    # The pause look-alike (a static program, its own entrypoint): the smallest workload both runtimes run.
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=WORKLOAD))


def start_pod(client: CriClient, host_network: bool) -> str:
    cfg = _pod(host_network)
    sid = client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    cid = client.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=_container(),
                                                                   sandbox_config=cfg), timeout=60).container_id
    client.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    return str(sid)


def teardown_pod(client: CriClient, sid: str) -> None:
    client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def start_and_teardown(clients: dict[str, CriClient], pods: int, host_network: bool, tag: str = ""
                       ) -> list[Samples]:
    """`pods` start+teardown cycles on each runtime, interleaved (one pod here, one there), so a change of load
    on this shared machine hits every runtime alike."""
    for client in clients.values():
        for _ in range(5):  # warm-up: zygote, page cache, first-call paths
            teardown_pod(client, start_pod(client, host_network))
    starts: dict[str, list[float]] = {name: [] for name in clients}
    teardowns: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(pods):
        for name, client in clients.items():
            box: list[str] = []
            starts[name].append(timed(lambda: box.append(start_pod(client, host_network))))
            teardowns[name].append(timed(lambda: teardown_pod(client, box[0])))
    out = []
    for name in clients:
        out += [Samples(f"{name} {tag}start (run+create+start)", starts[name]),
                Samples(f"{name} {tag}teardown (stopp+rmp)", teardowns[name])]
    return _show(out)


def _show(samples: list[Samples]) -> list[Samples]:
    for s in samples:
        print(s.line(), flush=True)
    return samples


def lists(label: str, client: CriClient, pods: int, calls: int = 1000) -> list[Samples]:
    made = [start_pod(client, host_network=True) for _ in range(pods)]
    try:
        containers = [timed(lambda: client.runtime.ListContainers(pb.ListContainersRequest(), timeout=30))
                      for _ in range(calls)]
        sandboxes = [timed(lambda: client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30))
                     for _ in range(calls)]
    finally:
        for sid in made:
            teardown_pod(client, sid)
    return _show([Samples(f"{label} ListContainers @{pods} pods", containers),
                  Samples(f"{label} ListPodSandbox @{pods} pods", sandboxes)])


def pull(client: CriClient, image: str) -> None:
    client.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=300)


def restart(mirror: Mirror, pods: int) -> None:
    """kill -9 the daemon with `pods` pods running; time from exec of the new daemon to the first complete
    ListContainers (the recovery itself is also logged by the daemon)."""
    d = lifecycle_daemon(mirror, extra={"server": {"log_level": "info"}}).start()
    client = d.client()
    pull(client, WORKLOAD)
    made = [start_pod(client, host_network=True) for _ in range(pods)]
    client.close()
    d.kill9()
    d.socket.unlink()   # so "the socket exists" below means the new daemon bound it
    started = time.perf_counter()
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(d.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    while not d.socket.exists():
        time.sleep(0.002)
    client = d.client()   # a fresh channel: no reconnect backoff left from the dead daemon
    while len(client.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers) < pods:
        time.sleep(0.002)
    first_list = time.perf_counter() - started
    recovered = [x for x in d.log_text().splitlines() if "recovered" in x][-1]
    print(f"restart with {pods} pods: first complete ListContainers {first_list * 1000:.0f} ms after exec of the "
          f"daemon; {recovered.split(': ', 1)[-1]}", flush=True)
    for sid in made:
        teardown_pod(client, sid)
    client.close()
    d.stop()


def run(mirror: Mirror, args: argparse.Namespace) -> list[Samples]:
    d = lifecycle_daemon(mirror, extra={"server": {"log_level": "info"}}).start()
    clients = {"cri-shim": d.client()}
    ctd = None
    try:
        if args.containerd:
            from bench.containerd import Containerd
            ctd = Containerd(mirror=f"http://{mirror.registry.host}").start()
            clients["containerd"] = CriClient(ctd.endpoint)
        for client in clients.values():
            pull(client, WORKLOAD)
        out = start_and_teardown(clients, args.pods, host_network=True)
        if args.pod_network:
            out += start_and_teardown(clients, args.pods, host_network=False, tag="pod-network ")
        if args.list_pods:
            out += lists("cri-shim", clients["cri-shim"], args.list_pods)
            if ctd is not None and args.containerd_lists:
                out += lists("containerd", clients["containerd"], args.list_pods)
        return out
    finally:
        for client in clients.values():
            client.close()
        if ctd is not None:
            ctd.stop()
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--list-pods", type=int, default=500)
    ap.add_argument("--pod-network", action="store_true")
    ap.add_argument("--containerd", action="store_true", help="also measure containerd + runc (Debian packages)")
    ap.add_argument("--restart-pods", type=int, default=0, help="also: restart time with this many pods")
    ap.add_argument("--containerd-lists", action="store_true", help="also the list measurement on containerd")
    args = ap.parse_args()
    mirror = start_mirror((BUSYBOX, *testimages.PAUSE))
    try:
        if args.restart_pods:
            restart(mirror, args.restart_pods)
        results = run(mirror, args)
    finally:
        mirror.close()
    print("----")
    for s in results:
        print(s.line())
    by = {s.name: s for s in results}
    for what in ("start (run+create+start)", "teardown (stopp+rmp)", "pod-network start (run+create+start)",
                 "pod-network teardown (stopp+rmp)"):
        ours, theirs = by.get(f"cri-shim {what}"), by.get(f"containerd {what}")
        if ours and theirs:
            print(f"ratio cri-shim/containerd {what}: p50 {ours.pct(50) / theirs.pct(50):.2f}x, "
                  f"p99 {ours.pct(99) / theirs.pct(99):.2f}x")


if __name__ == "__main__":
    main()
