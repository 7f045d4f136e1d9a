"""Pods as kubelet makes them, over the CRI: one container (the pause look-alike) per pod, a per-pod cgroup
parent, a log directory, kubelet's labels; each call timed."""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from tests.harness import testimages
from tests.harness.daemon import CriClient

from .targets import remove_cgroup_tree

# The smallest workload both runtimes run: a static program sleeping until SIGTERM (also containerd's sandbox
# image, so containerd's per-pod cost includes one more copy of it, as on a real node).
WORKLOAD = testimages.PAUSE[0]
RPC_TIMEOUT = 120


@dataclass(frozen=True)
class Pod:
    sandbox_id: str
    container_id: str
    uid: str
    cgroup_parent: str
    log_dir: str


@dataclass
class Timings:
    """Seconds per CRI call of one pod start or teardown."""

    calls: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.calls.values())


def pod_config(uid: str, cgroup_parent: str, log_dir: str, host_network: bool) -> pb.PodSandboxConfig:
    name = f"bench-{uid[:12]}"
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=uid, attempt=0),
        hostname=name, log_directory=log_dir,
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "bench",
                "io.kubernetes.pod.uid": uid, "app": "bench"},
        annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2026-01-01T00:00:00Z"})
    cfg.linux.cgroup_parent = cgroup_parent
    # kubelet's default (no shareProcessNamespace): each container its own PID namespace. The proto's zero value
    # would be POD, a shared one (cri-shim then runs an init process per pod).
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    if host_network:
        cfg.linux.security_context.namespace_options.network = pb.NODE
        cfg.hostname = ""   # kubelet sends none for host-network pods (the node's name is used)
    return cfg


def container_config(pod: pb.PodSandboxConfig) -> pb.ContainerConfig:
    meta = pod.metadata
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c", attempt=0), image=pb.ImageSpec(image=WORKLOAD),
        log_path="c/0.log",
        labels={"io.kubernetes.container.name": "c", "io.kubernetes.pod.name": meta.name,
                "io.kubernetes.pod.namespace": meta.namespace, "io.kubernetes.pod.uid": meta.uid},
        annotations={"io.kubernetes.container.restartCount": "0",
                     "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"})
    # kubelet repeats the pod's namespace modes in each container's security context.
    cfg.linux.security_context.namespace_options.CopyFrom(pod.linux.security_context.namespace_options)
    return cfg


@dataclass
class PodMaker:
    """Starts and tears down pods on one runtime through `client`."""

    client: CriClient
    cgroup_base: str
    log_root: Path
    host_network: bool

    def start(self) -> tuple[Pod, Timings]:
        uid = uuid.uuid4().hex
        parent = f"{self.cgroup_base}/pod{uid}"
        log_dir = self.log_root / uid
        cfg = pod_config(uid, parent, str(log_dir), self.host_network)
        log_dir.mkdir(parents=True)   # kubelet makes the pod's log directory before RunPodSandbox
        t = Timings()
        rt = self.client.runtime
        t0 = time.perf_counter()
        sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=RPC_TIMEOUT).pod_sandbox_id
        t1 = time.perf_counter()
        cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=container_config(cfg),
                                                           sandbox_config=cfg), timeout=RPC_TIMEOUT).container_id
        t2 = time.perf_counter()
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        t3 = time.perf_counter()
        t.calls = {"RunPodSandbox": t1 - t0, "CreateContainer": t2 - t1, "StartContainer": t3 - t2}
        return Pod(sid, cid, uid, parent, str(log_dir)), t

    def teardown(self, pod: Pod) -> Timings:
        """StopPodSandbox + RemovePodSandbox (which removes the container), as kubelet's pod GC does."""
        rt = self.client.runtime
        t0 = time.perf_counter()
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=RPC_TIMEOUT)
        t1 = time.perf_counter()
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=RPC_TIMEOUT)
        t2 = time.perf_counter()
        tidy(pod)
        return Timings({"StopPodSandbox": t1 - t0, "RemovePodSandbox": t2 - t1})

    def pod_ip(self, pod: Pod) -> str:
        st = self.client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.sandbox_id),
                                                  timeout=RPC_TIMEOUT).status
        return str(st.network.ip)


def tidy(pod: Pod) -> None:
    """What kubelet does after RemovePodSandbox (never timed): remove the pod's cgroup parent and log dir."""
    remove_cgroup_tree(pod.cgroup_parent)
    shutil.rmtree(pod.log_dir, ignore_errors=True)


def pull(client: CriClient, image: str = WORKLOAD) -> None:
    client.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=600)


def churn(endpoint: str, cgroup_base: str, log_root: str, host_network: bool, doomed: list[Pod]) -> list[Pod]:
    """Replace each pod of `doomed` with a new one, one after the other (remove, then start). Runs in its own
    process during the density measurement, so the lister's timings are not disturbed by this client's GIL."""
    client = CriClient(endpoint)
    maker = PodMaker(client, cgroup_base, Path(log_root), host_network)
    made = []
    try:
        for pod in doomed:
            maker.teardown(pod)
            made.append(maker.start()[0])
    finally:
        client.close()
    return made
