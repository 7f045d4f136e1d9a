"""A real kubelet in standalone mode (no API server) against a cri-shim started by the test.

kubelet reads deploy/kubelet/kubelet-config.yaml (the file operators install) with `--config`, and this test's
settings from a drop-in with `--config-dir`.

Everything kubelet makes is private to the test's work dir or tagged with the test base's name:
- --root-dir, --cert-dir, staticPodPath, podLogsDir, volumePluginDir: under the work dir;
- cgroupRoot `/cri-shim-kubelet-<tag>` (the leak check's tag), created here in every hierarchy and
  removed after kubelet and the pods are gone (kubelet itself never removes its QoS cgroups);
- ports: free ports on 127.0.0.1 (HTTPS server, read-only HTTP server, healthz).

Two host-wide things kubelet would otherwise change are kept inside its own mount namespace
(`unshare --mount --propagation slave`), because this machine is shared with other test runs:
- /var/log/containers, a fixed path in kubelet: /var/log is a bind mount of `<work dir>/varlog` in kubelet's
  namespace, so the symlinks kubelet makes land in the work dir (the targets, in podLogsDir, are the
  same paths in every namespace);
- the six kernel tunables kubelet sets at start (vm.overcommit_memory=1, kernel.panic_on_oops=1, ...):
  the ones whose host value differs are shown to kubelet as files holding its wanted value, and
  `protectKernelDefaults: true` makes kubelet fail instead of writing any of them. A real node lets
  kubelet set them. kubelet's bind mount of its root dir onto itself (MakeRShared) also stays in that
  namespace and disappears with it.
Also relaxed, and only these: `makeIPTablesUtilChains: false` (no KUBE-FIREWALL/KUBE-IPTABLES-HINT
chains in the host's iptables), `oomScoreAdj: 0` (this host has no CAP_SYS_RESOURCE, -999 is refused).
Swap checks stay on (the host has no swap).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.daemon import REPO, TMP_BASE
from tests.harness.leaks import cgroup_tag

KUBELET_VERSION = "v1.37.2"
KUBELET_CACHE = Path(os.environ.get("KUBELET_CACHE", "/var/cache/cri-shim-tests"))
CGROUP_FS = Path("/sys/fs/cgroup")
SNIPPET = REPO / "deploy" / "kubelet" / "kubelet-config.yaml"

# What kubelet's setupKernelTunables wants (pkg/kubelet/cm/container_manager_linux.go, component-helpers sysctl).
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


def kubelet_binary() -> Path:
    path = Path(os.environ.get("CRI_SHIM_KUBELET", KUBELET_CACHE / f"kubelet-{KUBELET_VERSION}"))
    if not path.exists():
        raise RuntimeError(f"kubelet {KUBELET_VERSION} is not built at {path}: run `make kubelet` "
                           f"(tests/e2e/build-kubelet.sh {KUBELET_VERSION} {path})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_subnet(first: str = "10.241.0.0/24", tries: int = 64) -> str:
    """The first /24 from `first` upwards that no host route overlaps (the daemon refuses overlapping subnets)."""
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True,
                                       text=True, check=True).stdout)
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes if r.get("dst", "default") != "default"
             and r["dst"][0].isdigit()]
    net = ipaddress.ip_network(first)
    for _ in range(tries):
        if not any(net.overlaps(t) for t in taken):
            return str(net)
        net = ipaddress.ip_network((int(net.network_address) + 256, 24))
    raise RuntimeError(f"no free /24 from {first} in {tries} tries; host routes: {taken}")


def cgroup_root_name() -> str:
    return f"/cri-shim-kubelet-{cgroup_tag(TMP_BASE)}"


def hierarchies() -> list[Path]:
    return [d for d in CGROUP_FS.iterdir() if d.is_dir() and not d.is_symlink()]


def make_cgroup_root(name: str) -> None:
    """kubelet refuses a cgroupRoot that does not exist in every hierarchy it uses; cpuset needs cpus/mems."""
    for top in hierarchies():
        path = top / name.lstrip("/")
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((top / knob).read_text())


def remove_cgroup_tree(name: str, timeout: float = 20) -> list[str]:
    """rmdir every cgroup below and at `name`, deepest first; returns the ones that could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left: list[str] = []
        for top in hierarchies():
            root = top / name.lstrip("/")
            if not root.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(root, topdown=False), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    left.append(dirpath)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@dataclass
class Kubelet:
    """One kubelet process; `start()` writes its config and waits for /healthz."""

    workdir: Path
    runtime_endpoint: str
    cgroup_driver: str
    node_name: str = "cri-shim-e2e"
    overrides: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    read_only_port: int = field(default_factory=free_port)
    healthz_port: int = field(default_factory=free_port)

    @property
    def manifests(self) -> Path:
        return self.workdir / "manifests"

    @property
    def root_dir(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def container_logs(self) -> Path:
        """What kubelet sees as /var/log/containers."""
        return self.workdir / "varlog" / "containers"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kubelet.log"

    @property
    def cgroup_root(self) -> str:
        return cgroup_root_name()

    def config(self) -> dict[str, Any]:
        """The drop-in (--config-dir) that kubelet merges over deploy/kubelet/kubelet-config.yaml (--config, the
        file operators install, parsed by kubelet itself): this test's socket, paths, ports and relaxations."""
        cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": self.runtime_endpoint,
            "imageServiceEndpoint": self.runtime_endpoint,
            "cgroupDriver": self.cgroup_driver,
            "cgroupRoot": self.cgroup_root,
            "staticPodPath": str(self.manifests),
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "address": "127.0.0.1",
            "port": self.port,
            "readOnlyPort": self.read_only_port,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "fileCheckFrequency": "1s",
            "syncFrequency": "10s",
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": True,
            "oomScoreAdj": 0,
            "resolvConf": "/etc/resolv.conf",
        }
        cfg.update(self.overrides)
        return cfg

    def _tunable_binds(self) -> list[tuple[Path, str]]:
        binds = []
        folder = self.workdir / "sysctl"
        folder.mkdir(exist_ok=True)
        for name, wanted in KERNEL_TUNABLES.items():
            actual = int((Path("/proc/sys") / name).read_text().split()[0])
            if actual != wanted:
                shown = folder / name.replace("/", ".")
                shown.write_text(f"{wanted}\n")
                binds.append((shown, f"/proc/sys/{name}"))
        return binds

    def argv(self) -> list[str]:
        return [str(kubelet_binary()), f"--config={SNIPPET}", f"--config-dir={self.workdir / 'kubelet-config.d'}",
                f"--root-dir={self.root_dir}", f"--cert-dir={self.root_dir / 'pki'}",
                f"--hostname-override={self.node_name}", "--v=2"]

    def start(self, wait: float = 90) -> Kubelet:
        for d in (self.manifests, self.root_dir, self.pod_logs, self.container_logs):
            d.mkdir(parents=True, exist_ok=True)
        (self.workdir / "kubelet-config.d").mkdir(exist_ok=True)
        (self.workdir / "kubelet-config.d" / "50-e2e.conf").write_text(json.dumps(self.config(), indent=2))
        make_cgroup_root(self.cgroup_root)
        mounts = [f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in self._tunable_binds()]
        mounts.append(f"mount --bind {shlex.quote(str(self.workdir / 'varlog'))} /var/log")
        script = " && ".join([*mounts, 'exec "$@"'])
        argv = ["unshare", "--mount", "--propagation", "slave", "--", "/bin/sh", "-c", script, "kubelet",
                *self.argv()]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_healthy(wait)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kubelet exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=2) as r:
                    if r.read() == b"ok":
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"kubelet not healthy after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ---------------------------------------------------------------- the read-only API

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.read_only_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def pods(self) -> list[dict[str, Any]]:
        return list(self.get("/pods").get("items") or [])

    def pod(self, name: str) -> dict[str, Any] | None:
        """A static pod by its manifest name (kubelet calls it <name>-<node name>)."""
        full = f"{name}-{self.node_name}"
        return next((p for p in self.pods() if p["metadata"]["name"] == full), None)

    # ---------------------------------------------------------------- static pods

    def add_pod(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        tmp = self.manifests / f".{name}.json.tmp"  # kubelet skips dot files; the rename is atomic
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.rename(self.manifests / f"{name}.json")

    def remove_pod(self, name: str) -> None:
        (self.manifests / f"{name}.json").unlink(missing_ok=True)
