"""Pods and containers against a real daemon: a local registry with the critest look-alike images, a daemon
that mirrors registry.k8s.io/gcr.io to it, and small helpers for the CRI calls the lifecycle tests make.

Everything the daemon makes is under the test base dir (CRI_SHIM_TEST_TMP) or in cgroups whose path has its
name (the leak check's tag), so `tests/conftest.py`'s leak check covers it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cri_shim.api import api_pb2 as pb
from tests.harness import testimages
from tests.harness.daemon import TMP_BASE, CriClient, Daemon, make_workdir, new_daemon
from tests.harness.leaks import cgroup_tag
from tests.harness.registry import LocalRegistry, start_registry

# The lifecycle tests' own CNI network: a private bridge name and subnet, IPAM state in the daemon's dir and no
# masquerading, so nothing global is shared with suites of other branches running at the same time.
BRIDGE = "cstlc0"
SUBNET = "10.219.0.0/16"
CONFLIST = """{{
  "cniVersion": "1.0.0", "name": "cst-lifecycle",
  "plugins": [{{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
               "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}"}}]], "dataDir": "{ipam}"}}}}]
}}
"""
BUSYBOX = testimages.BUSYBOX
NGINX = testimages.NGINX
MIRRORED = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")


def cgroup_parent() -> str:
    return f"/cri-shim-{cgroup_tag(TMP_BASE)}"


@dataclass
class Mirror:
    registry: LocalRegistry
    hosts: Path
    images: dict[str, testimages.TestImage]

    def close(self) -> None:
        self.registry.stop()
        shutil.rmtree(self.hosts, ignore_errors=True)
        remove_bridge()


def start_mirror(names: tuple[str, ...] = (BUSYBOX, NGINX)) -> Mirror:
    registry = start_registry()
    hosts = make_workdir("hosts")
    try:
        for host in MIRRORED:
            (hosts / host).mkdir()
            (hosts / host / "hosts.toml").write_text(
                f'server = "https://{host}"\n[host."http://{registry.host}"]\ncapabilities = ["pull", "resolve"]\n')
        wanted = [t for t in testimages.build_all() if t.name in names]
        testimages.push_all(registry.host, wanted)
    except BaseException:
        registry.stop()
        shutil.rmtree(hosts, ignore_errors=True)
        raise
    return Mirror(registry, hosts, testimages.by_name(wanted))


def lifecycle_daemon(mirror: Mirror, lifecycle: dict[str, Any] | None = None,
                     extra: dict[str, dict[str, Any]] | None = None, workdir: Path | None = None) -> Daemon:
    config: dict[str, dict[str, Any]] = {
        "registry": {"config_path": str(mirror.hosts)},
        "lifecycle": {"cgroup_parent": cgroup_parent(), **(lifecycle or {})},
    }
    for section, keys in (extra or {}).items():
        config.setdefault(section, {}).update(keys)
    d = new_daemon(config, workdir=workdir, cni=False)
    (d.cni_conf_dir / "10-cst-lifecycle.conflist").write_text(
        CONFLIST.format(bridge=BRIDGE, subnet=SUBNET, ipam=d.workdir / "ipam"))
    return d


def remove_bridge() -> None:
    """The CNI bridge plugin never deletes its bridge; the suite does, once no pod uses it."""
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def pod_config(name: str = "", *, namespace: str = "lifecycle", attempt: int = 0, log_dir: Path | None = None,
               host_network: bool = False, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None, **linux: Any) -> pb.PodSandboxConfig:
    name = name or f"pod-{uuid.uuid4().hex[:8]}"
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=f"uid-{name}", attempt=attempt),
        hostname=name[:63], labels=labels or {}, annotations=annotations or {},
        log_directory=str(log_dir) if log_dir else "")
    if host_network:
        cfg.linux.security_context.namespace_options.network = pb.NODE
    for key, value in linux.items():
        if isinstance(value, dict):
            getattr(cfg.linux, key).update(value)
        else:
            setattr(cfg.linux, key, value)
    return cfg


def container_config(name: str = "c", *, image: str = BUSYBOX, command: list[str] | None = None,
                     args: list[str] | None = None, attempt: int = 0, log_path: str = "",
                     envs: dict[str, bytes] | None = None, **fields: Any) -> pb.ContainerConfig:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name, attempt=attempt),
                             image=pb.ImageSpec(image=image), command=command or [], args=args or [],
                             log_path=log_path, **fields)
    for key, value in (envs or {}).items():
        cfg.envs.append(pb.KeyValue(key=key, value=value))
    return cfg


@dataclass
class Cri:
    """A gRPC client with the lifecycle calls the tests repeat."""

    client: CriClient
    made_pods: list[str] = field(default_factory=list)

    @property
    def rt(self) -> Any:
        return self.client.runtime

    def pull(self, image: str = BUSYBOX) -> str:
        return str(self.client.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                                               timeout=120).image_ref)

    def run_pod(self, config: pb.PodSandboxConfig | None = None, handler: str = "", timeout: float = 60) -> str:
        config = config or pod_config()
        sid = str(self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                        timeout=timeout).pod_sandbox_id)
        self.made_pods.append(sid)
        return sid

    def pod_status(self, sid: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        return self.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=verbose), timeout=10)

    def pod_config_of(self, sid: str) -> pb.PodSandboxConfig:
        st = self.pod_status(sid).status
        return pb.PodSandboxConfig(metadata=st.metadata, labels=st.labels, annotations=st.annotations)

    def create(self, sid: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig | None = None,
               timeout: float = 60) -> str:
        return str(self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=config, sandbox_config=sandbox_config or pb.PodSandboxConfig()),
            timeout=timeout).container_id)

    def start(self, cid: str) -> None:
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)

    def run(self, sid: str, config: pb.ContainerConfig) -> str:
        cid = self.create(sid, config)
        self.start(cid)
        return cid

    def status(self, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=verbose), timeout=10)

    def state(self, cid: str) -> int:
        return int(self.status(cid).status.state)

    def wait_state(self, cid: str, state: int, timeout: float = 30) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(cid).status
            if st.state == state or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 0) -> pb.ExecSyncResponse:
        return self.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=60)

    def stop(self, cid: str, timeout: int = 0) -> None:
        self.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=timeout + 60)

    def remove(self, cid: str) -> None:
        self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)

    def stop_pod(self, sid: str) -> None:
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)

    def remove_pod(self, sid: str) -> None:
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)

    def pods(self, **filt: Any) -> list[pb.PodSandbox]:
        return list(self.rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**filt)),
                                           timeout=10).items)

    def containers(self, **filt: Any) -> list[pb.Container]:
        return list(self.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(**filt)),
                                           timeout=10).containers)

    def clean(self) -> None:
        """Remove every pod this daemon has (tests leave nothing for the next one)."""
        for p in self.pods():
            self.stop_pod(p.id)
            self.remove_pod(p.id)

    def close(self) -> None:
        self.client.close()


def rpc_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


def wait_for(predicate: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Events:
    """GetContainerEvents read on a thread: what a subscriber such as kubelet's evented PLEG receives."""

    def __init__(self, cri: Cri) -> None:
        self._call = cri.rt.GetContainerEvents(pb.GetEventsRequest())
        self.seen: list[tuple[str, int]] = []   # (container or sandbox id, event type) in arrival order
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):   # cancelled by close()
            for event in self._call:
                self.seen.append((event.container_id, event.container_event_type))

    def of(self, object_id: str) -> list[int]:
        return [kind for oid, kind in list(self.seen) if oid == object_id]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)


def first_pod_seen(cri: Cri, seen: Callable[[str], bool], name: str) -> str:
    """Run pods until one's CREATED reaches the subscriber: the stream is live from then on.

    An event published before the subscription exists is not queued for it, and nothing else tells a client
    when the server has subscribed it.
    """
    for attempt in range(10):
        sid = cri.run_pod(pod_config(f"{name}-{attempt}"))
        if wait_for(lambda: seen(sid), 3):
            return sid
        cri.stop_pod(sid)
        cri.remove_pod(sid)
    raise AssertionError("the event stream delivered no pod's events in 10 tries")


def cgroups_of(sandbox_id: str) -> list[str]:
    """The cgroup directories (any v1 controller) of a pod made without a kubelet cgroup parent."""
    base = Path("/sys/fs/cgroup")
    rel = f"{cgroup_parent().lstrip('/')}/{sandbox_id}"
    return [str(d / rel) for d in base.iterdir() if (d / rel).is_dir()]


def iter_lines(path: Path) -> Iterator[str]:
    yield from path.read_text().splitlines() if path.exists() else []
