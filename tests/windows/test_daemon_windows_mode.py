"""The daemon's Windows mode (app.Daemon(windows_host=True)), run in this process on Linux with the fake HCS.

What this shows: on a Windows node the daemon serves gRPC on
tcp://127.0.0.1:<windows.grpc_port> and makes no unix socket, lock files or
other Linux-only setup (on Windows itself the root is locked with msvcrt: test_windows_lock.py); runtime handler "" (kubelet's pods without a
RuntimeClass) is process isolation; a pipe relay that cannot start fails the
start-up with an error naming the pipe. Not shown (windows_only, README): the
real named pipe, SIGBREAK from the service host, and the real interpreter on
Windows (test_windows_startup.py runs this mode with the POSIX-only modules
blocked).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import pytest

from cri_shim import config as C
from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc
from cri_shim.app import Daemon
from cri_shim.errors import StartupError
from tests.harness.daemon import make_workdir, toml
from tests.harness.registry import free_port
from tests.windows.windows_mode_child import wait_serving


def _config(workdir: Path, port: int, pipe: str = "") -> C.Config:
    (workdir / "cni").mkdir(exist_ok=True)
    path = workdir / "config.toml"
    path.write_text(toml({
        "server": {"socket": str(workdir / "run" / "cri-shim.sock"), "root": str(workdir / "root"),
                   "state": str(workdir / "s"), "shutdown_timeout": 5},
        "network": {"cni_conf_dir": str(workdir / "cni")},
        "windows": {"test_fake_hcs": str(workdir / "fake-hcs"), "grpc_port": port, "pipe": pipe,
                    "owner": "cst-winwire-mode"},
    }))
    return C.load(path)


def test_windows_mode_serves_loopback_tcp_only_and_maps_the_default_handler_to_process_isolation() -> None:
    workdir = make_workdir("win")
    port = free_port()
    cfg = _config(workdir, port)

    async def main() -> None:
        daemon = Daemon(cfg, windows_host=True)
        task = asyncio.ensure_future(daemon.run())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RuntimeServiceStub(channel)   # type: ignore[no-untyped-call]
            await wait_serving(stub, task)
            assert daemon.bound_port == port
            config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="hpc", namespace="w", uid="u"))
            config.windows.security_context.host_process = True
            pod = (await stub.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)).pod_sandbox_id
            status = (await stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10)).status
            assert status.runtime_handler == "" and status.state == pb.SANDBOX_READY
            handlers = (await stub.Status(pb.StatusRequest(), timeout=10)).runtime_handlers
            assert {h.name for h in handlers} == {"", "runhcs-wcow-process", "runhcs-wcow-hypervisor"}
            await stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
        daemon.request_stop()
        await task

    try:
        asyncio.run(main())
        assert not (workdir / "run").exists(), "Windows mode made the unix socket's directory"
        assert not (workdir / "root" / "cri-shim.lock").exists()
        report = json.loads((workdir / "fake-hcs" / "fake-hcs.json").read_text())
        assert report["problems"] == [] and report["calls"] == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_windows_mode_fails_start_up_clearly_when_the_pipe_relay_cannot_start() -> None:
    workdir = make_workdir("win")
    cfg = _config(workdir, free_port(), pipe="\\\\.\\pipe\\cst-winwire")
    try:
        with pytest.raises(StartupError, match=r"cannot serve the named pipe \\\\\.\\pipe\\cst-winwire"):
            asyncio.run(Daemon(cfg, windows_host=True).run())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.windows_only
def test_the_daemon_serves_crictl_over_the_named_pipe_on_windows(tmp_path: Path) -> None:
    """On a Windows node: `python -m cri_shim serve` starts (its whole import graph loads), kubelet's
    npipe endpoint answers through the relay, a HostProcess pod runs, and CTRL_BREAK stops the daemon."""
    import signal
    import subprocess
    import sys
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(toml({"server": {"root": str(tmp_path / "root"), "state": str(tmp_path / "state")},
                            "windows": {"state_dir": str(tmp_path / "windows"), "grpc_port": port,
                                        "pipe": "\\\\.\\pipe\\cst-winwire", "owner": "cst-winwire"}}))
    flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    daemon = subprocess.Popen([sys.executable, "-m", "cri_shim", "serve", "--config", str(config)],
                              creationflags=flags)
    try:
        pod_json = tmp_path / "pod.json"
        pod_json.write_text(json.dumps({"metadata": {"name": "hpc", "namespace": "w", "uid": "u"},
                                        "windows": {"security_context": {"host_process": True}}}))
        crictl = ["crictl", "--runtime-endpoint", "npipe:////./pipe/cst-winwire", "--timeout", "30"]
        for _ in range(100):
            if subprocess.run([*crictl, "version"], capture_output=True).returncode == 0:
                break
            asyncio.run(asyncio.sleep(0.1))
        pod = subprocess.run([*crictl, "runp", str(pod_json)], capture_output=True, text=True,
                             check=True).stdout.strip()
        subprocess.run([*crictl, "rmp", "-f", pod], check=True)
    finally:
        daemon.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
        assert daemon.wait(30) == 0
