"""A private containerd + runc (Debian packages) for side-by-side measurements.

Everything it uses lives under one temporary directory (root, state, socket,
config, CNI config and hosts.toml mirrors), so it never touches a containerd an
operator runs, and `stop()` removes it all: tasks, shims, mounts, netns.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# CRI_SHIM_BENCH_CONTAINERD: another containerd binary (or a missing one, to see the harness report "could not run").
CONTAINERD = os.environ.get("CRI_SHIM_BENCH_CONTAINERD") or shutil.which("containerd") or "/usr/bin/containerd"
CNI_BIN_DIR = "/usr/lib/cni"

CONFIG = """version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # this host has no CAP_SYS_RESOURCE: oom_score_adj can only be raised
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"""

BRIDGE = """{{"cniVersion": "0.4.0", "name": "{name}", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": {masquerade},
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}],
              "dataDir": "{ipam_dir}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}
"""


HOSTS_TOML = """server = "https://{host}"
[host."{mirror}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"""


@dataclass
class Containerd:
    mirror: str                               # e.g. "http://127.0.0.1:5000"
    mirrored_hosts: tuple[str, ...] = ("registry.k8s.io", "gcr.io", "k8s.gcr.io", "docker.io")
    sandbox_image: str = "registry.k8s.io/pause:3.9"
    subnet: str = "10.222.0.0/16"
    bridge: str = "cbench0"                   # the CNI bridge: `stop()` deletes it
    masquerade: bool = True                   # ipMasq of the CNI bridge (iptables rules per pod)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-containerd-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def _write_config(self) -> Path:
        certs = self.workdir / "certs.d"
        for host in self.mirrored_hosts:
            (certs / host).mkdir(parents=True, exist_ok=True)
            (certs / host / "hosts.toml").write_text(HOSTS_TOML.format(host=host, mirror=self.mirror))
        cni = self.workdir / "cni"
        cni.mkdir(exist_ok=True)
        # IPAM state in the work dir (not /var/lib/cni), so a crash leaves nothing outside it.
        (cni / "10-bench.conflist").write_text(BRIDGE.format(
            name=f"bench-{self.bridge}", bridge=self.bridge, subnet=self.subnet,
            masquerade="true" if self.masquerade else "false", ipam_dir=self.workdir / "ipam"))
        config = self.workdir / "config.toml"
        config.write_text(CONFIG.format(root=self.workdir / "root", state=self.workdir / "state",
                                        socket=self.socket, sandbox_image=self.sandbox_image,
                                        cni_bin=CNI_BIN_DIR, cni_conf=cni, certs=certs))
        return config

    def start(self, timeout: float = 30) -> Containerd:
        self._write_config()
        self.spawn()
        self.wait_socket(timeout)
        return self

    def spawn(self) -> None:
        """Exec containerd (the config must be written); returns at once."""
        log = open(self.workdir / "containerd.log", "ab")
        self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.workdir / "config.toml")], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_socket(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {(self.workdir / 'containerd.log').read_text()[-2000:]}")
            if self.socket.exists():
                return
            time.sleep(0.05)
        raise RuntimeError("containerd did not create its socket in time")

    def kill9(self) -> None:
        """SIGKILL containerd alone (its shims and containers keep running) and remove its socket, so that a
        socket seen after `spawn()` is the new process's."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        """Remove every pod through CRI, stop containerd and its shims, unmount and delete everything."""
        crictl = shutil.which("crictl")
        if crictl and self.proc and self.proc.poll() is None:
            args = [crictl, "--runtime-endpoint", self.endpoint, "--timeout", "60s"]
            subprocess.run(args + ["rmp", "-a", "-f"], capture_output=True, timeout=600)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_leftover_shims()
        self._unmount_all()
        # The CNI bridge plugin never deletes its bridge.
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_leftover_shims(self) -> None:
        marker = str(self.workdir)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "containerd-shim" in cmd and marker in cmd:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount_all(self) -> None:
        marker = str(self.workdir)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mountpoint in sorted((m for m in mounts if m.startswith(marker)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)
