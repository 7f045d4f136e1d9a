"""Broken and hostile clients: garbage frames, silence, half-opened sessions, 1,000 dropped sessions.

Each test checks that only the offending connection ends: a healthy session
running alongside completes, and the server keeps serving. The target is the
host-process stand-in for the pod shim (real processes and ptys).
"""

from __future__ import annotations

import base64
import ctypes
import gc
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from cri_shim.config import StreamingConfig
from cri_shim.streaming import spdy
from tests.harness.spdy_client import RawSpdyClient, upgrade
from tests.harness.stream_server import CLIENT_BIN, ServerThread, build_client, client
from tests.harness.stream_target import ExecSession
from tests.harness.ws_client import RawWsClient


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    build_client()
    s = ServerThread(StreamingConfig(idle_timeout=600, stream_creation_timeout=2))
    yield s
    s.stop()


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                out.add(int(pid))
    return out


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    """Resident memory after handing free heap back to the OS, so fragmentation is not counted as growth."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _settle(srv: ServerThread, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while srv.server.live_connections or srv.server.sessions_running or srv.target.exec_sessions:
        assert time.monotonic() < deadline, (srv.server.live_connections, srv.server.sessions_running,
                                             len(srv.target.exec_sessions))
        time.sleep(0.05)


def _long_session(srv: ServerThread) -> subprocess.Popen[bytes]:
    """A healthy exec that runs while the hostile clients do their worst; it must finish normally."""
    url = srv.call(srv.server.exec_url, "ctr", ["sh", "-c", "cat; echo fine"], False, True, True, True)
    return subprocess.Popen([str(CLIENT_BIN), "exec", "-stdin", "-url", url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(p: subprocess.Popen[bytes], data: bytes) -> None:
    out, err = p.communicate(data, timeout=30)
    assert (p.returncode, out) == (0, data + b"fine\n"), err


def _garbage_frames(rng: random.Random) -> bytes:
    comp = spdy.HeaderCompressor()
    choices = [
        lambda: rng.randbytes(rng.randint(1, 300)),                                   # noise
        lambda: b"\x80\x03\x00\x01" + bytes([0, 0xFF, 0xFF, 0xFF]),                   # huge SYN_STREAM length
        lambda: b"\x80\x02\x00\x01\x00\x00\x00\x04abcd",                              # wrong version
        lambda: b"\x80\x03\x00\x01\x00\x00\x00\x0c" + rng.randbytes(12),              # undecompressable headers
        lambda: spdy.encode_syn_stream(comp, 2, (("streamtype", "error"),)),          # even stream id
        lambda: spdy.encode_data(0, b"x"),                                            # data on stream 0
        lambda: b"\x80\x03\x00\x06\x00\x00\x00\x05\x00\x00\x00\x01\x00",              # bad PING length
        lambda: spdy.encode_syn_stream(comp, 1, (("streamtype", "error"),)) + rng.randbytes(64),
    ]
    return b"".join(rng.choice(choices)() for _ in range(rng.randint(1, 4)))


def test_garbage_frames_close_only_their_connection(srv: ServerThread) -> None:
    healthy = _long_session(srv)
    rng = random.Random(8)
    try:
        for i in range(150):
            kind = ["exec", "portforward"][i % 2]
            url = (srv.call(srv.server.exec_url, "ctr", ["sleep", "60"], False, True, True, True) if kind == "exec"
                   else srv.call(srv.server.portforward_url, "sb"))
            protos = ("v4.channel.k8s.io",) if kind == "exec" else ("portforward.k8s.io",)
            sock = upgrade(url, protos)
            sock.settimeout(10)
            try:
                sock.sendall(_garbage_frames(rng))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # the server must hang up (not hang)
                    pass
            except (ConnectionError, TimeoutError) as e:
                assert not isinstance(e, TimeoutError), f"server kept connection {i} open after garbage"
            finally:
                sock.close()
    finally:
        _finish(healthy, b"still here\n")
    # The server still serves new sessions, and the garbage ones left no process behind.
    r = client(["exec", "-url", srv.call(srv.server.exec_url, "ctr", ["echo", "-n", "ok"], False, False, True, True)])
    assert (r.returncode, r.stdout) == (0, b"ok")
    _settle(srv)


def test_a_client_that_opens_too_few_streams_is_dropped_after_the_creation_timeout(srv: ServerThread) -> None:
    url = srv.call(srv.server.exec_url, "ctr", ["sleep", "60"], False, True, True, True)
    c = RawSpdyClient(upgrade(url))
    c.sock.settimeout(10)
    c.open_stream({"streamType": "error"})          # stdin, stdout, stderr never come
    start = time.monotonic()
    frames = c.frames()
    assert 1.5 < time.monotonic() - start < 8       # the configured 2 s, then the connection ends
    assert any(isinstance(f, spdy.SynReply) for f in frames)
    assert any(isinstance(f, spdy.GoAway) for f in frames)
    c.close()
    _settle(srv)


def test_ping_is_echoed_and_unknown_control_frames_are_ignored(srv: ServerThread) -> None:
    url = srv.call(srv.server.exec_url, "ctr", ["echo", "-n", "pong"], False, False, True, False)
    c = RawSpdyClient(upgrade(url))
    c.sock.settimeout(10)
    c.sock.sendall(b"\x80\x03\x00\x04\x00\x00\x00\x04\x00\x00\x00\x00")  # SETTINGS (ignored)
    c.sock.sendall(b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x10")  # WINDOW_UPDATE
    c.sock.sendall(spdy.encode_ping(7))
    c.open_stream({"streamType": "error"})
    out = c.open_stream({"streamType": "stdout"})
    frames = c.frames()
    assert spdy.Ping(7) in frames
    assert b"".join(f.data for f in frames if isinstance(f, spdy.Data) and f.stream_id == out) == b"pong"
    c.close()
    _settle(srv)


def test_idle_connections_are_closed_and_their_process_killed() -> None:
    s = ServerThread(StreamingConfig(idle_timeout=1.0))
    try:
        before = _children()
        url = s.call(s.server.exec_url, "ctr", ["sleep", "300"], False, True, True, True)
        c = RawSpdyClient(upgrade(url))
        c.sock.settimeout(15)
        for t in ("error", "stdin", "stdout", "stderr"):
            c.open_stream({"streamType": t})
        deadline = time.monotonic() + 5   # the server starts it once the streams are open
        while not _children() - before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _children() - before, "the exec process should be running"
        start = time.monotonic()
        c.frames()                                   # returns when the server hangs up
        assert time.monotonic() - start < 5
        c.close()
        _settle(s)
        deadline = time.monotonic() + 5
        while _children() - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _children() - before, "the idle session's process was left running"
    finally:
        s.stop()


def _open_session(url: str, rng: random.Random) -> RawSpdyClient:
    c = RawSpdyClient(upgrade(url))
    for t in ("error", "stdin", "stdout", "resize"):
        c.open_stream({"streamType": t})
    for _ in range(rng.randint(1, 3)):
        c.resize(7, rng.randint(20, 200), rng.randint(10, 60))
    if rng.random() < 0.5:
        c.send(3, b"some input\n")
    return c


def _drop(c: RawSpdyClient, rng: random.Random) -> None:
    if rng.random() < 0.3:
        c.sock.sendall(b"\x00\x00\x00")           # leave mid-frame: half a DATA header
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()                                        # RST: the client vanishes


def test_1000_dropped_tty_sessions_leave_no_process_fd_thread_or_memory_behind(srv: ServerThread) -> None:
    rng = random.Random(1000)

    def batch(n: int) -> None:
        started = srv.target.execs_started
        urls = [srv.call(srv.server.exec_url, "ctr", ["cat"], True, True, True, False) for _ in range(n)]
        clients = [_open_session(u, rng) for u in urls]
        deadline = time.monotonic() + 30
        while srv.target.execs_started < started + n:   # every session really runs its process
            assert time.monotonic() < deadline, srv.target.execs_started - started
            time.sleep(0.01)
        for c in clients:
            _drop(c, rng)
        _settle(srv, 60)

    # Warm-up: caches, lazily created objects, and malloc arenas reaching their high-water mark (in a
    # pytest process that has already run a thousand tests, one batch was not always enough).
    for _ in range(5):
        batch(50)
    gc.collect()
    fds, threads, rss, kids = _fds(), threading.active_count(), _rss_kib(), _children()
    for _ in range(20):
        batch(50)
    gc.collect()
    assert _children() == kids, "processes left behind"
    assert _fds() == fds, "file descriptors (ptys, pipes, sockets) left open"
    assert threading.active_count() == threads
    grown = _rss_kib() - rss
    assert grown < 10 * 1024, f"RSS grew {grown} KiB over 1,000 sessions"
    live = [o for o in gc.get_objects() if isinstance(o, (spdy.SpdyConnection, spdy.SpdyStream, ExecSession))]
    assert live == [], f"{len(live)} session objects still referenced"


# ---------------------------------------------------------------- WebSocket protocols the Go clients don't offer


def test_websocket_v4_binary_channels_and_json_status(srv: ServerThread) -> None:
    url = srv.call(srv.server.exec_url, "ctr", ["sh", "-c", "echo -n out; echo -n err >&2; exit 5"], False, False,
                   True, True)
    c = RawWsClient(url, "v4.channel.k8s.io")
    assert c.accepted == "v4.channel.k8s.io"
    msgs = [m for m in c.messages() if isinstance(m, bytes)]
    c.close()
    by_channel: dict[int, bytes] = {}
    for m in msgs:
        by_channel[m[0]] = by_channel.get(m[0], b"") + m[1:]
    assert by_channel[1] == b"out" and by_channel[2] == b"err"
    status = json.loads(by_channel[3])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "5"}]


def test_websocket_v4_base64_channels_are_text(srv: ServerThread) -> None:
    url = srv.call(srv.server.exec_url, "ctr", ["head", "-c", "12"], False, True, True, False)
    c = RawWsClient(url, "v4.base64.channel.k8s.io")
    assert c.accepted == "v4.base64.channel.k8s.io"
    c.send_text("0" + base64.b64encode(b"hello base64").decode())
    msgs = c.messages()
    c.close()
    assert all(isinstance(m, str) for m in msgs)
    by_channel: dict[str, bytes] = {}
    for m in msgs:
        assert isinstance(m, str)
        by_channel[m[0]] = by_channel.get(m[0], b"") + base64.b64decode(m[1:])
    assert by_channel["1"] == b"hello base64"
    assert json.loads(by_channel["3"]) == {"metadata": {}, "status": "Success"}


def test_websocket_garbage_closes_only_that_connection(srv: ServerThread) -> None:
    healthy = _long_session(srv)
    try:
        for payload in (b"\x82\x7f" + b"\xff" * 8,          # 64-bit length with the top bit set
                        b"\x0f\x80\x00\x00\x00\x00",         # reserved opcode
                        b"\x82\x05hello",                     # unmasked client frame
                        os.urandom(200)):
            url = srv.call(srv.server.exec_url, "ctr", ["sleep", "60"], False, True, True, True)
            c = RawWsClient(url, "v5.channel.k8s.io")
            c.sock.sendall(payload)
            c.sock.settimeout(10)
            try:
                while c.sock.recv(65536):
                    pass
            except ConnectionError:
                pass
            c.close()
    finally:
        _finish(healthy, b"ws still here\n")
    _settle(srv)


# ---------------------------------------------------------------- port-forward stream checks


def test_portforward_streams_without_a_valid_port_or_type_are_reset(srv: ServerThread) -> None:
    c = RawSpdyClient(upgrade(srv.call(srv.server.portforward_url, "sb"), ("portforward.k8s.io",)))
    c.sock.settimeout(10)
    bad = [c.open_stream({"streamType": "error", "requestID": "1"}),                       # no port
           c.open_stream({"streamType": "data", "port": "99999", "requestID": "2"}),      # out of range
           c.open_stream({"streamType": "stdin", "port": "80", "requestID": "3"})]        # not error/data
    frames = c.frames(until=spdy.RstStream)
    while len([f for f in frames if isinstance(f, spdy.RstStream)]) < 3:
        frames += c.frames(until=spdy.RstStream)
    assert sorted(f.stream_id for f in frames if isinstance(f, spdy.RstStream)) == bad
    c.close()
    _settle(srv)


def test_portforward_half_a_pair_is_reset_after_the_creation_timeout(srv: ServerThread) -> None:
    c = RawSpdyClient(upgrade(srv.call(srv.server.portforward_url, "sb"), ("portforward.k8s.io",)))
    c.sock.settimeout(10)
    sid = c.open_stream({"streamType": "error", "port": "80", "requestID": "0"})
    start = time.monotonic()
    frames = c.frames(until=spdy.RstStream)
    assert spdy.RstStream(sid, spdy.RstStatus.CANCEL) in frames
    assert 1.5 < time.monotonic() - start < 8   # the configured 2 s
    c.close()
    _settle(srv)


def test_spdy_v3_gets_plain_text_failure_on_the_error_stream(srv: ServerThread) -> None:
    url = srv.call(srv.server.exec_url, "ctr", ["sh", "-c", "echo -n x; exit 2"], False, False, True, False)
    c = RawSpdyClient(upgrade(url, ("v3.channel.k8s.io",)))
    c.sock.settimeout(10)
    err = c.open_stream({"streamType": "error"})
    out = c.open_stream({"streamType": "stdout"})
    frames = c.frames()
    c.close()

    def data(sid: int) -> bytes:
        return b"".join(f.data for f in frames if isinstance(f, spdy.Data) and f.stream_id == sid)

    assert data(out) == b"x"
    assert data(err).startswith(b"command terminated with non-zero exit code") and data(err).endswith(b"exit code 2")
    fins = {f.stream_id for f in frames if isinstance(f, spdy.Data) and f.flags & spdy.FLAG_FIN}
    assert {err, out} <= fins
    _settle(srv)
