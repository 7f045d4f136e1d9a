"""A minimal blocking WebSocket client (wsproto) for protocols the Go clients do not offer (v4, v4.base64)."""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection, Request,
                            TextMessage)


class RawWsClient:
    def __init__(self, url: str, subprotocol: str, timeout: float = 10) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=parts.netloc, target=parts.path, subprotocols=[subprotocol])))
        self.accepted: str | None = None
        self.closed = False
        self._pending: list[bytes | str] = []
        while self.accepted is None:
            self._pump()

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        if not data:
            self.closed = True
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                self.accepted = ev.subprotocol or ""
            elif isinstance(ev, RejectConnection):
                raise AssertionError(f"rejected with {ev.status_code}")
            elif isinstance(ev, Message):
                assert ev.message_finished
                self._pending.append(ev.data)
            elif isinstance(ev, CloseConnection):
                if self.ws.state.name == "REMOTE_CLOSING":
                    with contextlib.suppress(OSError):  # we may have shut our side already
                        self.sock.sendall(self.ws.send(ev.response()))
                self.closed = True
        if self.closed and self.accepted is None:
            raise AssertionError("closed during the handshake")

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data=data)))

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def messages(self) -> list[bytes | str]:
        """Every message until the server closes."""
        while not self.closed:
            self._pump()
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        self.sock.close()
