"""Streaming benchmark: exec round trip and port-forward throughput, over SPDY and WebSocket.

Prints numbers, asserts nothing. The client is tests/streaming_client (client-go,
as crictl uses it); the target runs host processes (the pod-shim stand-in).
References printed alongside: the same `echo` spawned directly (the floor
any exec pays) and a direct loopback TCP transfer (the floor for forwarding).

    .venv/bin/python bench/streaming.py [--runs 30] [--mb 100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.stream_server import CLIENT_BIN, ServerThread, build_client  # noqa: E402
from tests.integration.test_streaming import Forwarder, LoopbackServer  # noqa: E402


def exec_p50(srv: ServerThread, transport: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        url = srv.call(srv.server.exec_url, "bench", ["echo", "hi"], False, False, True, True)
        start = time.perf_counter()
        r = subprocess.run([str(CLIENT_BIN), "exec", "-transport", transport, "-url", url], capture_output=True)
        times.append(time.perf_counter() - start)
        assert r.stdout == b"hi\n", r
    return statistics.median(times) * 1000


def direct_echo_p50(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["echo", "hi"], capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def download_mb_s(port: int, size: int) -> float:
    start = time.perf_counter()
    got = 0
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.shutdown(socket.SHUT_WR)
        while data := c.recv(1 << 20):
            got += len(data)
    assert got == size, got
    return size / (1 << 20) / (time.perf_counter() - start)


def upload_mb_s(port: int, size: int) -> float:
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        for _ in range(size >> 20):
            c.sendall(block)
        c.shutdown(socket.SHUT_WR)
        assert len(c.recv(100)) == 64  # the sink's sha256 once it has everything
    return size / (1 << 20) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    size = args.mb << 20
    build_client()
    srv = ServerThread()
    source, sink = LoopbackServer("source", size), LoopbackServer("sink")
    try:
        floor = direct_echo_p50(args.runs)
        print(f"reference: direct `echo` spawn p50            {floor:8.2f} ms")
        for transport in ("spdy", "websocket"):
            p50 = exec_p50(srv, transport, args.runs)
            print(f"exec round trip (`echo`) p50, {transport:9s}       {p50:8.2f} ms   (x{p50 / floor:.1f} of direct)")
        direct_down, direct_up = download_mb_s(source.port, size), upload_mb_s(sink.port, size)
        print(f"reference: direct loopback {args.mb} MB              {direct_down:8.1f} MB/s down {direct_up:8.1f} MB/s up")
        for transport in ("spdy", "websocket"):
            fwd = Forwarder(srv, transport, [source.port, sink.port])
            try:
                down, up = download_mb_s(fwd.local[source.port], size), upload_mb_s(fwd.local[sink.port], size)
            finally:
                fwd.stop()
            print(f"port-forward {args.mb} MB, {transport:9s}            {down:8.1f} MB/s down {up:8.1f} MB/s up"
                  f"   (x{down / direct_down:.2f} / x{up / direct_up:.2f} of direct)")
    finally:
        source.close()
        sink.close()
        srv.stop()


if __name__ == "__main__":
    main()
