"""The streaming server driven by real client-go clients (crictl's code), over SPDY and WebSocket.

Behind the server, `HostProcessTarget` stands in for the pod shim until the
integrator wires the real one: exec runs real host processes (a real pty for
tty), attach connects to a real long-running process, port-forward connects to
real loopback listeners started here.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.harness.stream_server import CLIENT_BIN, ServerThread, build_client, client

TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    build_client()
    s = ServerThread()
    yield s
    s.stop()


def exec_url(s: ServerThread, cmd: list[str], tty: bool = False, stdin: bool = False, stderr: bool = True) -> str:
    return s.call(s.server.exec_url, "ctr-exec", cmd, tty, stdin, True, stderr and not tty)


# ---------------------------------------------------------------- exec


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_echo_gives_exactly_hello_and_no_stderr(srv: ServerThread, transport: str) -> None:
    r = client(["exec", "-transport", transport, "-url", exec_url(srv, ["echo", "-n", "hello"])])
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hello", b"")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_reaches_the_process_and_its_output_comes_back(srv: ServerThread, transport: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(2000))
    r = client(["exec", "-transport", transport, "-stdin", "-url", exec_url(srv, ["cat"], stdin=True)], stdin=data)
    assert (r.returncode, r.stdout, r.stderr) == (0, data, b"")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [1, 3, 255])
def test_exec_exit_code_becomes_the_clients_exit_code(srv: ServerThread, transport: str, code: int) -> None:
    cmd = ["sh", "-c", f"echo out; echo err >&2; exit {code}"]
    r = client(["exec", "-transport", transport, "-url", exec_url(srv, cmd)])
    assert (r.returncode, r.stdout, r.stderr) == (code, b"out\n", b"err\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_killed_by_a_signal_exits_128_plus_signal(srv: ServerThread, transport: str) -> None:
    r = client(["exec", "-transport", transport, "-url", exec_url(srv, ["sh", "-c", "kill -9 $$"])])
    assert r.returncode == 137, r.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_ends_when_the_process_exits_although_stdin_stays_open(srv: ServerThread, transport: str) -> None:
    url = exec_url(srv, ["echo", "done"], stdin=True)
    p = subprocess.Popen([str(CLIENT_BIN), "exec", "-transport", transport, "-stdin",
                          "-url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None
        out = p.stdout.read()  # EOF although our end of its stdin is still open
        assert p.wait(timeout=15) == 0
        assert out == b"done\n"
    finally:
        p.kill()
        p.communicate()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tty_exec_starts_with_the_clients_size_and_applies_resizes(srv: ServerThread, transport: str) -> None:
    url = exec_url(srv, ["sh", "-c", "stty size; sleep 1; stty size"], tty=True, stdin=True)
    r = client(["exec", "-transport", transport, "-tty", "-stdin", "-resize", "80x24,100x30", "-url", url],
               stdin=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"24", b"80", b"30", b"100"], r.stdout


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tty_exec_merges_stderr_into_stdout(srv: ServerThread, transport: str) -> None:
    url = exec_url(srv, ["sh", "-c", "echo to-err >&2; exit 4"], tty=True, stdin=False)
    r = client(["exec", "-transport", transport, "-tty", "-url", url])
    assert r.returncode == 4
    assert b"to-err" in r.stdout and r.stderr == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_of_a_missing_container_reports_the_reason(srv: ServerThread, transport: str) -> None:
    url = srv.call(srv.server.exec_url, "missing-ctr", ["true"], False, False, True, True)
    r = client(["exec", "-transport", transport, "-url", url])
    assert r.returncode != 0
    assert b"container missing-ctr not found" in r.stderr


# ---------------------------------------------------------------- attach


def _wait_for(cond: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_two_attachers_see_output_and_stdin_once_ends_the_container(srv: ServerThread,
                                                                           transport: str) -> None:
    cid = f"ctr-attach-{transport}"
    container = srv.run(srv.target.start_container(cid, ["sh"], stdin_once=True))
    watcher_url = srv.call(srv.server.attach_url, cid, False, False, True, True)
    watcher = subprocess.Popen([str(CLIENT_BIN), "exec", "-transport", transport,
                                "-url", watcher_url], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: len(container.attachers) == 1)
        writer_url = srv.call(srv.server.attach_url, cid, False, True, True, True)
        r = client(["exec", "-transport", transport, "-stdin", "-url", writer_url], stdin=b"echo -n hello\n")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"hello", b"")
        out, err = watcher.communicate(timeout=15)
        assert (watcher.returncode, out) == (0, b"hello"), err
        assert srv.run(container.proc.wait()) == 0  # stdin_once closed sh's stdin: it exited
        assert bytes(container.log) == b"hello"     # the log got the output too
    finally:
        watcher.kill()
        watcher.communicate()


# ---------------------------------------------------------------- port-forward


class LoopbackServer:
    """A threaded TCP server on 127.0.0.1: `echo` echoes, `sink` answers sha256 of all it read, `source` sends N bytes."""

    def __init__(self, mode: str, size: int = 0) -> None:
        self.mode, self.size = mode, size
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if self.mode == "source":
                block = bytes(range(256)) * 256
                sent = 0
                while sent < self.size:
                    n = min(len(block), self.size - sent)
                    conn.sendall(block[:n])
                    sent += n
                return
            h = hashlib.sha256()
            while data := conn.recv(65536):
                if self.mode == "echo":
                    conn.sendall(data)
                h.update(data)
            if self.mode == "sink":
                conn.sendall(h.hexdigest().encode())

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class Forwarder:
    """The Go port-forward client (crictl's dialers) running for one session."""

    def __init__(self, srv: ServerThread, transport: str, remote_ports: list[int]) -> None:
        url = srv.call(srv.server.portforward_url, "sandbox-1")
        spec = ",".join(f"0:{p}" for p in remote_ports)
        self.proc = subprocess.Popen([str(CLIENT_BIN), "portforward", "-transport", transport,
                                      "-url", url, "-ports", spec], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("READY "), line + self.proc.stderr.read().decode()  # type: ignore[union-attr]
        self.local = {int(r): int(loc) for loc, r in (p.split(":") for p in line.split()[1:])}

    def stop(self) -> tuple[int, bytes]:
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        out = bytearray()
        while data := c.recv(1 << 20):
            out += data
        return bytes(out)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_portforward_many_concurrent_connections_on_one_session(srv: ServerThread, transport: str) -> None:
    echo = LoopbackServer("echo")
    fwd = Forwarder(srv, transport, [echo.port])
    try:
        results: dict[int, bytes] = {}
        payloads = {i: os.urandom(1000 + 997 * i) for i in range(40)}

        def one(i: int) -> None:
            results[i] = _roundtrip(fwd.local[echo.port], payloads[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == payloads
    finally:
        code, err = fwd.stop()
        echo.close()
    assert b"error" not in err.lower(), err


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_portforward_moves_100_mb_each_way_intact(srv: ServerThread, transport: str) -> None:
    size = 100 << 20
    sink, source = LoopbackServer("sink"), LoopbackServer("source", size)
    fwd = Forwarder(srv, transport, [sink.port, source.port])
    try:
        block = os.urandom(1 << 20)
        with socket.create_connection(("127.0.0.1", fwd.local[sink.port]), timeout=60) as c:
            for _ in range(100):
                c.sendall(block)
            c.shutdown(socket.SHUT_WR)
            digest = c.recv(1024)
        assert digest == hashlib.sha256(block * 100).hexdigest().encode()
        got = _roundtrip(fwd.local[source.port], b"")
        assert len(got) == size
        assert hashlib.sha256(got).digest() == hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).digest()
    finally:
        fwd.stop()
        sink.close()
        source.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_portforward_to_a_closed_port_reports_it_on_the_error_stream(srv: ServerThread, transport: str) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    fwd = Forwarder(srv, transport, [port])
    try:
        with socket.create_connection(("127.0.0.1", fwd.local[port]), timeout=10) as c:
            c.settimeout(10)
            assert c.recv(10) == b""  # the forwarded connection is closed, not hung
    finally:
        _, err = fwd.stop()
    assert f"error forwarding port {port} to pod sandbox-1".encode() in err, err


# ---------------------------------------------------------------- bad input


def _raw(url_or_base: str, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    parts = urlsplit(url_or_base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path, headers=headers)
    return conn.getresponse()


SPDY_UPGRADE = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v4.channel.k8s.io"}


def test_unknown_token_is_404(srv: ServerThread) -> None:
    r = _raw(srv.server.base_url, "POST", "/exec/AAAAAAAA", SPDY_UPGRADE)
    assert r.status == 404 and b"token" in r.read()


def test_a_used_token_is_404_the_second_time(srv: ServerThread) -> None:
    url = exec_url(srv, ["true"])
    assert client(["exec", "-url", url]).returncode == 0
    r = _raw(url, "POST", urlsplit(url).path, SPDY_UPGRADE)
    assert r.status == 404


def test_token_for_exec_does_not_open_attach(srv: ServerThread) -> None:
    url = exec_url(srv, ["true"])
    token = url.rsplit("/", 1)[1]
    assert _raw(url, "POST", f"/attach/{token}", SPDY_UPGRADE).status == 404


def test_no_common_protocol_is_403_naming_the_accepted_ones(srv: ServerThread) -> None:
    url = exec_url(srv, ["true"])
    r = _raw(url, "POST", urlsplit(url).path, {**SPDY_UPGRADE, "X-Stream-Protocol-Version": "v9.channel.k8s.io"})
    assert r.status == 403
    assert "v4.channel.k8s.io" in (r.getheader("X-Accepted-Stream-Protocol-Versions") or "")


def test_websocket_with_no_common_subprotocol_is_403(srv: ServerThread) -> None:
    url = exec_url(srv, ["true"])
    r = _raw(url, "GET", urlsplit(url).path, {"Connection": "Upgrade", "Upgrade": "websocket",
                                              "Sec-WebSocket-Version": "13",
                                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                              "Sec-WebSocket-Protocol": "v1.bogus"})
    assert r.status == 403
    assert "v5.channel.k8s.io" in (r.getheader("X-Accepted-Stream-Protocol-Versions") or "")


def test_request_without_upgrade_is_400(srv: ServerThread) -> None:
    url = exec_url(srv, ["true"])
    assert _raw(url, "GET", urlsplit(url).path, {}).status == 400


def test_oversized_request_header_is_431(srv: ServerThread) -> None:
    r = _raw(srv.server.base_url, "POST", "/exec/AAAAAAAA", {"X-Big": "a" * 20000})
    assert r.status == 431
