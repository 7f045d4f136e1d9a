"""The two runtimes under test, behind one interface: a cri-shim daemon and a private containerd + runc.

Both get the same registry mirror (the test suite's local registry, under the upstream names), the same CNI
bridge conflist (own bridge name and subnet each, IPAM state in their own directory, no masquerade), log levels
of warnings and up, and cgroups below `/cri-shim-<test base>/bench-<runtime>` (per-pod parents below that, as
kubelet gives them). Everything else each creates lives under its work dir inside CRI_SHIM_TEST_TMP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.containerd import BRIDGE, Containerd
from bench.containerd import CONTAINERD as CONTAINERD_BINARY
from cri_shim.api import api_pb2 as pb
from tests.harness.daemon import REPO, TMP_BASE, CriClient, Daemon, make_workdir, new_daemon
from tests.harness.leaks import cgroup_tag

from .stats import CONTAINERD, SHIM

CGROUP_ROOT = Path("/sys/fs/cgroup")


class Unavailable(Exception):
    """A runtime or tool this workload needs cannot run on this machine (reported as "could not run")."""


def bench_cgroup_root() -> str:
    return f"/cri-shim-{cgroup_tag(TMP_BASE)}"


def remove_cgroup_tree(rel: str) -> list[str]:
    """rmdir `rel` and everything below it in every hierarchy (v1 controllers and the v2 mount); returns the
    directories that could not be removed (still holding processes)."""
    left = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / rel.lstrip("/")
        if hierarchy.is_symlink() or not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(dirpath)
    return left


def wait_answering(endpoint: str, timeout: float) -> None:
    """Until Version succeeds (containerd creates its socket before its CRI plugin answers)."""
    client = CriClient(endpoint)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.runtime.Version(pb.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@dataclass
class Target(ABC):
    """One runtime: start/stop, its processes, and kill -9 + restart for the restart workload."""

    name: str
    bridge: str
    subnet: str

    @property
    def cgroup_base(self) -> str:
        return f"{bench_cgroup_root()}/bench-{self.name}"

    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    @property
    @abstractmethod
    def workdir(self) -> Path: ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> list[str]:
        """Stop the runtime and remove everything it made; returns problems found on the way."""

    @abstractmethod
    def daemon_pid(self) -> int: ...

    @abstractmethod
    def kill9(self) -> None:
        """SIGKILL the daemon process only (shims and containers keep running)."""

    @abstractmethod
    def spawn(self) -> None:
        """Exec the daemon again after kill9; returns at once."""

    def markers(self) -> list[str]:
        """Strings in the command line of every process of this runtime (its private dirs)."""
        return [f"{self.workdir}/"]

    def client(self) -> CriClient:
        return CriClient(self.endpoint)

    def log_problems(self) -> list[str]:
        return []

    def _tidy_shared(self) -> list[str]:
        problems = []
        left = remove_cgroup_tree(self.cgroup_base)
        if left:
            problems.append(f"cgroups still in use: {left[:5]}")
        ports = Path(f"/sys/class/net/{self.bridge}/brif")
        if ports.is_dir() and os.listdir(ports):
            # A veth still on the bridge means a pod's network namespace still exists.
            problems.append(f"bridge {self.bridge} still has ports: {sorted(os.listdir(ports))[:5]}")
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        return problems


@dataclass
class ShimTarget(Target):
    hosts_dir: Path = Path()
    daemon: Daemon | None = None

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None, "cri-shim is not started"
        return self.daemon

    @property
    def endpoint(self) -> str:
        return self.d.endpoint

    @property
    def workdir(self) -> Path:
        return self.d.workdir

    def start(self) -> None:
        config = {"registry": {"config_path": str(self.hosts_dir)},
                  "lifecycle": {"cgroup_parent": f"{self.cgroup_base}/default"},
                  "network": {"mode": "cni"}}
        self.daemon = new_daemon(config, cni=False, log_level="warning")
        (self.d.cni_conf_dir / "10-bench.conflist").write_text(BRIDGE.format(
            name=f"bench-{self.bridge}", bridge=self.bridge, subnet=self.subnet, masquerade="false",
            ipam_dir=self.d.workdir / "ipam"))
        self.d.start()

    def daemon_pid(self) -> int:
        assert self.d.proc is not None
        return self.d.proc.pid

    def kill9(self) -> None:
        self.d.kill9()
        self.d.socket.unlink(missing_ok=True)   # so a socket seen later is the new daemon's

    def spawn(self) -> None:
        with open(self.d.log_path, "ab") as log:
            self.d.proc = subprocess.Popen(self.d.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                           env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)

    def log_problems(self) -> list[str]:
        text = self.d.log_text() if self.daemon else ""
        return ["cri-shim logged a Traceback (see its daemon.log)"] if "Traceback" in text else []

    def stop(self) -> list[str]:
        if self.daemon is None:
            return []
        problems = self.log_problems()
        try:
            if self.d.proc is not None and self.d.proc.poll() is None:
                remove_all_pods(self.endpoint)
                code = self.d.stop()
                if code != 0:
                    problems.append(f"cri-shim exited with {code}: {self.d.log_tail(5)}")
        finally:
            saved = results_log_dir() / "cri-shim-daemon.log"
            if self.d.log_path.exists():
                shutil.copy(self.d.log_path, saved)
            shutil.rmtree(self.d.workdir, ignore_errors=True)
            problems += self._tidy_shared()
        return problems


@dataclass
class ContainerdTarget(Target):
    mirror: str = ""
    ctd: Containerd | None = None
    _workdir: Path = field(default_factory=Path)

    @property
    def c(self) -> Containerd:
        assert self.ctd is not None, "containerd is not started"
        return self.ctd

    @property
    def endpoint(self) -> str:
        return self.c.endpoint

    @property
    def workdir(self) -> Path:
        return self.c.workdir

    def start(self) -> None:
        if not os.access(CONTAINERD_BINARY, os.X_OK) or not shutil.which("runc"):
            raise Unavailable(f"{CONTAINERD_BINARY} or runc is not installed (Debian packages containerd, runc)")
        self.ctd = Containerd(mirror=self.mirror, bridge=self.bridge, subnet=self.subnet, masquerade=False,
                              workdir=make_workdir("ctd"))
        try:
            self.c.start()
            wait_answering(self.endpoint, 30)
        except Exception as e:
            self.c.stop()
            raise Unavailable(f"containerd did not start: {e}") from e

    def daemon_pid(self) -> int:
        assert self.c.proc is not None
        return self.c.proc.pid

    def kill9(self) -> None:
        self.c.kill9()

    def spawn(self) -> None:
        self.c.spawn()

    def stop(self) -> list[str]:
        if self.ctd is None:
            return []
        log = self.c.workdir / "containerd.log"
        if log.exists():
            shutil.copy(log, results_log_dir() / "containerd.log")
        self.c.stop()
        return self._tidy_shared()


def remove_all_pods(endpoint: str) -> None:
    client = CriClient(endpoint)
    try:
        for pod in client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items:
            client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
    finally:
        client.close()


def results_log_dir() -> Path:
    d = REPO / "bench" / "results" / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_targets(hosts_dir: Path, registry_host: str) -> dict[str, Target]:
    """Bridges and subnets unique to this harness (`cbs*`, 10.225/10.226), so nothing collides with the test
    suites of other branches running on the same machine."""
    return {SHIM: ShimTarget(SHIM, bridge="cbsshim0", subnet="10.225.0.0/16", hosts_dir=hosts_dir),
            CONTAINERD: ContainerdTarget(CONTAINERD, bridge="cbsctd0", subnet="10.226.0.0/16",
                                         mirror=f"http://{registry_host}")}
