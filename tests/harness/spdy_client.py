"""A minimal blocking SPDY/3.1 client for tests that need to misbehave (drop sessions, send garbage).

Protocol conformance is proven with the Go client (client-go, as crictl); this
one exists to do what a well-behaved client never does.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from cri_shim.streaming import spdy


def upgrade(url: str, protocols: tuple[str, ...] = ("v4.channel.k8s.io",), timeout: float = 10) -> socket.socket:
    """Open the connection and do the SPDY/3.1 upgrade; raises AssertionError unless 101."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"connection closed during upgrade: {head!r}")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


class RawSpdyClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.comp = spdy.HeaderCompressor()
        self.parser = spdy.FrameParser()
        self.next_id = 1

    def open_stream(self, headers: dict[str, str], fin: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        self.sock.sendall(spdy.encode_syn_stream(self.comp, sid, tuple(headers.items()), fin=fin))
        return sid

    def send(self, sid: int, data: bytes, fin: bool = False) -> None:
        self.sock.sendall(spdy.encode_data(sid, data, fin))

    def resize(self, sid: int, width: int, height: int) -> None:
        self.send(sid, json.dumps({"Width": width, "Height": height}).encode() + b"\n")

    def frames(self, until: type | None = None, max_frames: int = 10000) -> list[spdy.Frame]:
        """Read frames until EOF (or a frame of type `until`)."""
        out: list[spdy.Frame] = []
        while len(out) < max_frames:
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, TimeoutError):
                break
            if not data:
                break
            out += self.parser.feed(data)
            if until is not None and any(isinstance(f, until) for f in out):
                break
        return out

    def close(self) -> None:
        self.sock.close()
