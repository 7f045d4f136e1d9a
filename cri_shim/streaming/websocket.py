"""WebSocket transport (RFC 6455 via wsproto) for exec/attach channels and the SPDY port-forward tunnel.

Subprotocols served:
- `v5.channel.k8s.io`: what crictl/critest `--transport websocket` offer (client-go
  NewWebSocketExecutor). Binary messages, first byte = channel id; `[255, id]`
  from the client half-closes channel `id` (stdin EOF).
- `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`: the same without the close
  signal; the base64 variant uses text messages of an ASCII digit + base64.
- `SPDY/3.1+portforward.k8s.io`: crictl/critest WebSocket port-forward
  (client-go NewSPDYOverWebsocketDialerForStreaming): raw SPDY/3.1 frames carried
  as a byte stream in binary messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Event, Message, Ping,
                            RejectConnection, RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

PROTO_V5 = "v5.channel.k8s.io"
PROTO_V4 = "v4.channel.k8s.io"
PROTO_V4_BASE64 = "v4.base64.channel.k8s.io"
PROTO_SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"
CHANNEL_PROTOCOLS = (PROTO_V5, PROTO_V4, PROTO_V4_BASE64)
PORTFORWARD_PROTOCOLS = (PROTO_SPDY_TUNNEL,)

CLOSE_SIGNAL = 255
MAX_MESSAGE = 4 << 20          # a client-go message is at most a 32 KiB copy buffer or one SPDY frame chunk
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class WebSocketError(Exception):
    """The peer broke the WebSocket protocol or sent an oversized message; drop the connection."""


def start_handshake(head: bytes) -> tuple[WSConnection, Request]:
    """Feed the raw HTTP request head to a server-side wsproto connection; its Request event."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
        for event in ws.events():
            if isinstance(event, Request):
                return ws, event
    except RemoteProtocolError as e:
        raise WebSocketError(f"bad WebSocket upgrade request: {e}") from None
    raise WebSocketError("bad WebSocket upgrade request")


def reject_bytes(ws: WSConnection, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    body = (message + "\n").encode()
    hdrs = headers + [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    return ws.send(RejectConnection(status_code=status, headers=hdrs, has_body=True)) + \
        ws.send(RejectData(data=body))


@dataclass(eq=False)
class WebSocket:
    """An accepted server-side WebSocket over asyncio streams; whole messages in and out."""

    ws: WSConnection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    on_activity: Callable[[], None] = lambda: None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _partial: list[bytes | str] = field(default_factory=list)
    _partial_size: int = 0
    closed: bool = False

    async def accept(self, subprotocol: str) -> None:
        await self._write(self.ws.send(AcceptConnection(subprotocol=subprotocol)))

    async def recv(self) -> bytes | str | None:
        """Next complete message (bytes for binary, str for text); None once the peer closed."""
        while True:
            for event in self.ws.events():
                msg = await self._handle(event)
                if msg is not None:
                    return msg
                if self.closed:
                    return None
            if self.closed:
                return None
            data = await self.reader.read(65536)
            if not data:
                self.closed = True  # the peer vanished without a close frame
                return None
            self.on_activity()
            try:
                self.ws.receive_data(data)
            except RemoteProtocolError as e:
                raise WebSocketError(f"WebSocket protocol error: {e}") from None

    async def _handle(self, event: Event) -> bytes | str | None:
        if isinstance(event, Message):
            return self._collect(event)
        if isinstance(event, Ping):
            await self._send_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send_event(event.response())
            self.closed = True
        return None

    def _collect(self, event: Message) -> bytes | str | None:  # type: ignore[type-arg]
        self._partial_size += len(event.data)
        if self._partial_size > MAX_MESSAGE:
            raise WebSocketError(f"WebSocket message larger than {MAX_MESSAGE} bytes")
        self._partial.append(event.data)
        if not event.message_finished:
            return None
        parts, self._partial, self._partial_size = self._partial, [], 0
        if isinstance(event, TextMessage):
            return "".join(str(p) for p in parts)
        return b"".join(p for p in parts if isinstance(p, bytes))

    async def send_bytes(self, data: bytes) -> None:
        await self._send_event(BytesMessage(data=data))

    async def send_text(self, text: str) -> None:
        await self._send_event(TextMessage(data=text))

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "", wait: float = 2.0) -> None:
        """Send a close frame, then wait (bounded) for the peer's so it reads everything first."""
        if self.ws.state is ConnectionState.OPEN:
            try:
                await self._send_event(CloseConnection(code=code, reason=reason))
            except (ConnectionError, OSError, LocalProtocolError):
                return
        try:
            await asyncio.wait_for(self._drain_until_closed(), wait)
        except (TimeoutError, WebSocketError, ConnectionError, OSError):
            pass

    async def _drain_until_closed(self) -> None:
        while await self.recv() is not None:
            pass

    async def _send_event(self, event: Event) -> None:
        try:
            data = self.ws.send(event)
        except LocalProtocolError as e:
            raise ConnectionResetError(f"WebSocket closed: {e}") from None
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            self.on_activity()
            self.writer.write(data)
            await self.writer.drain()


# ---------------------------------------------------------------- exec/attach channels


@dataclass(eq=False)
class WsChannel:
    """One k8s channel multiplexed on the WebSocket; same interface as a SPDY stream."""

    conn: ChannelMux
    channel_id: int
    inbox: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(64))
    eof: bool = False
    input_closed: bool = False
    discard_input: bool = False

    async def read(self) -> bytes:
        if self.eof and self.inbox.empty():
            return b""
        chunk = await self.inbox.get()
        if chunk is None:
            self.eof = True
            return b""
        return chunk

    async def write(self, data: bytes) -> None:
        await self.conn.send(self.channel_id, data)

    async def close(self) -> None:
        # Server-to-client EOF is the end of the WebSocket itself in every k8s channel protocol.
        return

    def stop_reading(self) -> None:
        self.discard_input = True
        while not self.inbox.empty():
            self.inbox.get_nowait()
        self.inbox.put_nowait(None)

    async def end_input(self) -> None:
        """The client half-closed this channel (v5 close signal): queued data is still read first."""
        if not self.input_closed:
            self.input_closed = True
            if not self.discard_input:
                await self.inbox.put(None)

    def abort(self) -> None:
        """The connection is gone: readers see EOF at once."""
        self.input_closed = True
        self.stop_reading()


@dataclass(eq=False)
class ChannelMux:
    """Demultiplexes k8s channel messages (`v4/v5.channel.k8s.io`, base64 variant) onto WsChannels."""

    socket: WebSocket
    protocol: str
    channels: dict[int, WsChannel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cid in range(5):
            self.channels[cid] = WsChannel(self, cid)

    @property
    def base64(self) -> bool:
        return self.protocol == PROTO_V4_BASE64

    async def send(self, channel_id: int, data: bytes) -> None:
        if self.base64:
            await self.socket.send_text(chr(ord("0") + channel_id) + base64.b64encode(data).decode())
        else:
            await self.socket.send_bytes(bytes([channel_id]) + data)

    async def serve(self) -> None:
        """Route messages until the peer closes; channels then read EOF."""
        try:
            while True:
                msg = await self.socket.recv()
                if msg is None:
                    return
                cid, payload = self._decode(msg)
                await self._route(cid, payload)
        finally:
            for ch in self.channels.values():
                ch.abort()

    def _decode(self, msg: bytes | str) -> tuple[int, bytes]:
        if isinstance(msg, str):
            if not self.base64 or not msg:
                raise WebSocketError("text message on a binary channel protocol")
            try:
                return ord(msg[0]) - ord("0"), base64.b64decode(msg[1:], validate=True)
            except (binascii.Error, ValueError):
                raise WebSocketError("bad base64 in a channel message") from None
        if not msg:
            raise WebSocketError("empty channel message (no channel id)")
        return msg[0], msg[1:]

    async def _route(self, cid: int, payload: bytes) -> None:
        if cid == CLOSE_SIGNAL and self.protocol == PROTO_V5:
            if len(payload) != 1:
                raise WebSocketError("close signal must name exactly one channel")
            ch = self.channels.get(payload[0])
            if ch is not None:
                await ch.end_input()
            return
        ch = self.channels.get(cid)
        if ch is None:
            log.debug("message for unknown channel %d discarded", cid)
            return
        if payload and not ch.discard_input and not ch.input_closed:
            await ch.inbox.put(payload)
