"""Start and stop a real cri-shim daemon as a subprocess, on private socket/root/state dirs."""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
# Short on purpose: a daemon's state dir (<base>/dXXXXXXXX/s) and the runc handler's (<state>/runc) must leave room
# for the pod shim sockets below them in sun_path's 108 bytes.
TMP_BASE = Path(os.environ.get("CRI_SHIM_TEST_TMP", "/tmp/cst-tests"))
CNI_BIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]

# A bridge network like the one operators install; used wherever NetworkReady must be true.
CNI_BRIDGE = "crishimtest0"
BRIDGE_CONFLIST = """{
  "cniVersion": "1.0.0",
  "name": "cri-shim-test",
  "plugins": [
    {"type": "bridge", "bridge": "crishimtest0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"""


def make_workdir(prefix: str = "d") -> Path:
    TMP_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TMP_BASE))


def toml(sections: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {value(v)}" for k, v in keys.items())
        out.append("")
    return "\n".join(out)


def channel(endpoint: str) -> grpc.Channel:
    # grpcio sends the socket path as :authority unless told otherwise (grpc#38142).
    return grpc.insecure_channel(endpoint, options=[("grpc.default_authority", "localhost"),
                                                    ("grpc.max_receive_message_length", 16 << 20)])


@dataclass
class CriClient:
    endpoint: str
    _channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self._channel = channel(self.endpoint)
        self.runtime = pb_grpc.RuntimeServiceStub(self._channel)
        self.image = pb_grpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()


@dataclass
class Daemon:
    workdir: Path
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "daemon.log"

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "cri-shim.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def state(self) -> Path:
        return self.workdir / "s"  # short: pod shim sockets live below it (sun_path is 108 bytes)

    @property
    def cni_conf_dir(self) -> Path:
        return self.workdir / "cni"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cri_shim", "serve", "--config", str(self.config_path),
                "--socket", str(self.socket), "--root", str(self.root), "--state", str(self.state)]

    def start(self, wait: float = 30.0) -> Daemon:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                     start_new_session=True)
        log.close()
        self.wait_ready(wait)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = CriClient(self.endpoint)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"cri-shim exited with {self.proc.returncode}:\n{self.log_tail()}")
                if self.socket.exists():
                    try:
                        client.runtime.Version(pb.VersionRequest(), timeout=2)
                        return
                    except grpc.RpcError:
                        pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"cri-shim did not become ready in {timeout}s:\n{self.log_tail()}")

    def client(self) -> CriClient:
        return CriClient(self.endpoint)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"cri-shim ignored SIGTERM for {timeout}s:\n{self.log_tail()}") from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def crictl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        cfg = self.workdir / "crictl.yaml"
        if not cfg.exists():
            cfg.write_text(f"runtime-endpoint: {self.endpoint}\nimage-endpoint: {self.endpoint}\ntimeout: 30\n")
        crictl = shutil.which("crictl") or "/usr/local/bin/crictl"
        result = subprocess.run([crictl, "--config", str(cfg), *args], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n"
                                 f"daemon log:\n{self.log_tail()}")
        return result


def new_daemon(config: dict[str, dict[str, Any]] | None = None, *, cni: bool = True,
               log_level: str = "debug", workdir: Path | None = None) -> Daemon:
    """A daemon (not started) with its own dirs; `cni` writes a bridge conflist so NetworkReady is true."""
    workdir = workdir or make_workdir()
    d = Daemon(workdir=workdir, config_path=workdir / "config.toml")
    d.cni_conf_dir.mkdir(exist_ok=True)
    if cni:
        (d.cni_conf_dir / "10-bridge.conflist").write_text(BRIDGE_CONFLIST)
    sections: dict[str, dict[str, Any]] = {
        "server": {"log_level": log_level, "metrics_address": "127.0.0.1:0", "shutdown_timeout": 5},
        "network": {"cni_conf_dir": str(d.cni_conf_dir), "cni_bin_dirs": CNI_BIN_DIRS},
    }
    for section, keys in (config or {}).items():
        sections.setdefault(section, {}).update(keys)
    d.config_path.write_text(toml(sections))
    return d


def crictl_on_a_terminal(daemon: Daemon, args: list[str], until: bytes) -> bytes:
    """`crictl <args>` on a terminal of its own, as a user types it: what it printed, up to `until`."""
    master, slave = os.openpty()
    argv = [daemon.crictl("version").args[0], "--config", str(daemon.workdir / "crictl.yaml"), *args]
    proc = subprocess.Popen(["setsid", "-c", *argv], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        out = read_pty(master, time.monotonic() + 20, until)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return out


def read_pty(master: int, deadline: float, until: bytes | None = None) -> bytes:
    """What the pty shows until the deadline, EOF, or (if given) until `until` has appeared."""
    out = b""
    while time.monotonic() < deadline and (until is None or until not in out):
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(master, 65536)
        except OSError as e:
            if e.errno == errno.EIO:
                break  # the program on the terminal exited: the slave side is closed
            raise
        if not data:
            break
        out += data
    return out
