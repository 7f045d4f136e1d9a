"""Real crictl v1.37.0 against the streaming server, over `--transport spdy` and `--transport websocket`.

crictl talks to `tests/harness/cri_stub.py`, a CRI endpoint with only
Version/ImageFsInfo/Exec/Attach/PortForward that stands in for the daemon's RPC
layer (it calls the same StreamingServer URL methods the daemon will), and the
sessions run on the host-process stand-in for the pod shim.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from cri_shim.api import api_pb2 as pb

from tests.harness.cri_stub import serve
from tests.harness.daemon import CriClient, make_workdir, read_pty
from tests.harness.stream_server import ServerThread

TRANSPORTS = ["spdy", "websocket"]
CRICTL = shutil.which("crictl") or "/usr/local/bin/crictl"


@dataclass
class Env:
    srv: ServerThread
    endpoint: str

    def argv(self, *args: str) -> list[str]:
        return [CRICTL, "--config", "/dev/null", "--runtime-endpoint", self.endpoint, "--timeout", "10s", *args]

    def crictl(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*args), input=stdin, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if not os.path.exists(CRICTL):
        pytest.fail("crictl is not installed (make tools)")
    srv = ServerThread()
    workdir = make_workdir("crictl")
    sock = workdir / "cri.sock"
    grpc_server = srv.run(serve(srv.server, str(sock)))
    try:
        yield Env(srv, f"unix://{sock}")
    finally:
        srv.run(grpc_server.stop(0))
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_exec_prints_exactly_the_output(env: Env, transport: str) -> None:
    r = env.crictl("exec", "--transport", transport, "ctr", "echo", "-n", "hello")
    assert (r.returncode, r.stdout) == (0, b"hello"), r.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_exec_interactive_pipes_stdin(env: Env, transport: str) -> None:
    r = env.crictl("exec", "-i", "--transport", transport, "ctr", "sh", "-c", "cat; echo end >&2", stdin=b"abc\n")
    assert (r.returncode, r.stdout) == (0, b"abc\n"), r.stderr
    assert b"end\n" in r.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_exec_failure_reports_the_exit_code(env: Env, transport: str) -> None:
    # crictl v1.37.0's main() exits 1 for every error (cmd/crictl/main.go); the exact code the
    # server sent is in its message. (client-go's CodeExitError carries it: see test_streaming.py.)
    r = env.crictl("exec", "--transport", transport, "ctr", "sh", "-c", "exit 42")
    assert r.returncode == 1
    assert b"command terminated with exit code 42" in r.stderr


def test_exec_rpc_with_tty_and_stderr_is_invalid_argument(env: Env) -> None:
    client = CriClient(env.endpoint)
    try:
        with pytest.raises(grpc.RpcError) as e:
            client.runtime.Exec(pb.ExecRequest(container_id="ctr", cmd=["sh"], tty=True, stdin=True, stdout=True,
                                               stderr=True), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tty and stderr" in (e.value.details() or "")
    finally:
        client.close()


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_exec_it_in_a_real_terminal_follows_resizes(env: Env, transport: str) -> None:
    """crictl runs on a pty (its controlling terminal, via setsid -c); resizing that pty reaches the remote tty."""
    master, slave = os.openpty()
    _set_size(slave, 33, 111)
    cmd = "stty size; sleep 2; stty size; exit 7"
    proc = subprocess.Popen(["setsid", "-c", *env.argv("exec", "-it", "--transport", transport, "ctr",
                                                        "sh", "-c", cmd)],
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        first = read_pty(master, time.monotonic() + 15, until=b"33 111")   # resize only after the first size
        _set_size(master, 44, 122)  # the kernel sends SIGWINCH to crictl, which sends a resize
        rest = read_pty(master, time.monotonic() + 15)
        assert proc.wait(timeout=15) == 1  # crictl's exit for a non-zero remote code (see above)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    output = first + rest
    assert b"33 111" in output, output
    assert b"44 122" in output, output
    assert b"exit code 7" in output, output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_attach_with_stdin_once(env: Env, transport: str) -> None:
    cid = f"crictl-attach-{transport}"
    container = env.srv.run(env.srv.target.start_container(cid, ["sh"], stdin_once=True))
    r = env.crictl("attach", "-i", "--transport", transport, cid, stdin=b"echo -n hello\n")
    assert (r.returncode, r.stdout) == (0, b"hello"), r.stderr
    assert env.srv.run(container.proc.wait()) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_port_forward(env: Env, transport: str) -> None:
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(20)
    local = _free_port()
    proc = subprocess.Popen(env.argv("port-forward", "--transport", transport, "sandbox-1",
                                     f"{local}:{backend.getsockname()[1]}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"Forwarding from 127.0.0.1:%d" % local in line, line + proc.stderr.read()  # type: ignore[union-attr]
        for i in range(3):  # several connections on the one session
            with socket.create_connection(("127.0.0.1", local), timeout=20) as c:
                conn, _ = backend.accept()
                with conn:
                    c.sendall(b"ping %d" % i)
                    assert conn.recv(100) == b"ping %d" % i
                    conn.sendall(b"pong %d" % i)
                    assert c.recv(100) == b"pong %d" % i
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        backend.close()

