"""crictl exec, exec -it, attach and port-forward against real containers of the daemon, over SPDY and
WebSocket: the Exec/Attach/PortForward RPCs, the streaming server and the pod shim together."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.harness.daemon import Daemon, crictl_on_a_terminal
from tests.harness.lifecycle_env import NGINX, Cri, container_config, pod_config, rpc_error, wait_for

TRANSPORTS = ["spdy", "websocket"]


def _crictl(daemon: Daemon, *args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    argv = [daemon.crictl("version").args[0], "--config", str(daemon.workdir / "crictl.yaml"), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)


@pytest.fixture
def sleeper(cri: Cri) -> str:
    sid = cri.run_pod()
    return cri.run(sid, container_config(command=["sleep", "1000"]))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_prints_exactly_the_output_and_reports_the_exit_code(daemon: Daemon, sleeper: str,
                                                                  transport: str) -> None:
    r = _crictl(daemon, "exec", "--transport", transport, sleeper, "echo", "-n", "hello")
    assert (r.returncode, r.stdout) == (0, b"hello"), r.stderr
    r = _crictl(daemon, "exec", "-i", "--transport", transport, sleeper, "sh", "-c", "cat; exit 42", stdin=b"in\n")
    assert r.stdout == b"in\n" and b"exit code 42" in r.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_it_runs_on_a_terminal_inside_the_container(daemon: Daemon, sleeper: str, transport: str) -> None:
    out = crictl_on_a_terminal(daemon, ["exec", "-it", "--transport", transport, sleeper, "sh", "-c",
                                        "tty; echo done-$((6*7))"], b"done-42")
    assert b"/dev/pts/" in out and b"done-42" in out, out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_with_stdin_once_reaches_the_main_process(daemon: Daemon, cri: Cri, transport: str) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sh"], stdin=True, stdin_once=True))
    r = _crictl(daemon, "attach", "-i", "--transport", transport, cid, stdin=b"echo -n hello\n")
    assert (r.returncode, r.stdout) == (0, b"hello"), r.stderr
    st = cri.wait_state(cid, pb.CONTAINER_EXITED)
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 0


def test_attach_with_a_tty_mismatch_is_invalid_argument(cri: Cri, sleeper: str) -> None:
    e = rpc_error(cri.rt.Attach, pb.AttachRequest(container_id=sleeper, tty=True, stdout=True), timeout=10)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "tty" in (e.details() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_reaches_a_server_inside_the_pod_network(daemon: Daemon, cri: Cri, transport: str) -> None:
    cri.pull(NGINX)
    sid = cri.run_pod(pod_config())
    cid = cri.run(sid, container_config("web", image=NGINX))
    assert wait_for(lambda: cri.exec_sync(cid, ["sh", "-c", "netstat -ln | grep -q ':80 '"]).exit_code == 0)
    local = _free_port()
    argv = [daemon.crictl("version").args[0], "--config", str(daemon.workdir / "crictl.yaml"),
            "port-forward", "--transport", transport, sid, f"{local}:80"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"Forwarding from 127.0.0.1:%d" % local in line, line
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=20) as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_port_forward_of_a_stopped_pod_is_failed_precondition(cri: Cri) -> None:
    sid = cri.run_pod()
    cri.stop_pod(sid)
    e = rpc_error(cri.rt.PortForward, pb.PortForwardRequest(pod_sandbox_id=sid), timeout=10)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_pod_ip_is_reported_and_reachable_from_the_host(cri: Cri) -> None:
    cri.pull(NGINX)
    sid = cri.run_pod(pod_config())
    cid = cri.run(sid, container_config("web", image=NGINX))
    ip = cri.pod_status(sid).status.network.ip
    assert ip.startswith("10.219."), ip
    assert wait_for(lambda: cri.exec_sync(cid, ["sh", "-c", "netstat -ln | grep -q ':80 '"]).exit_code == 0)
    with urllib.request.urlopen(f"http://{ip}:80/", timeout=20) as resp:
        assert resp.status == 200
    cri.stop_pod(sid)   # CNI DEL: the address is released
    assert cri.pods(id=sid)[0].state == pb.SANDBOX_NOTREADY
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{ip}:80/", timeout=3)
