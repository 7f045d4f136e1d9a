"""SPDY/3.1 framing and a server-side stream multiplexer, as kubelet and crictl speak it.

Only the subset the Kubernetes streaming clients use (github.com/moby/spdystream):
SYN_STREAM, SYN_REPLY, DATA, RST_STREAM, PING, GOAWAY and HEADERS. SETTINGS and
WINDOW_UPDATE are read and ignored because the Go peer implements no flow
control either; backpressure comes from TCP and from bounded per-stream inboxes.

Header blocks are zlib streams primed with the SPDY/3 dictionary, one context
per direction for the whole connection, so frames must be compressed in the
order they are sent (the writer lock covers both).

Any framing error is a `FrameError`: the caller closes that connection only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

VERSION = 3
# The wire allows 16 MiB frames; Go peers write 32 KiB (io.Copy's buffer), so 1 MiB leaves headroom
# while bounding what one hostile frame can make us buffer.
MAX_FRAME_PAYLOAD = 1 << 20
MAX_HEADER_BLOCK = 64 * 1024             # decompressed; k8s clients send a few hundred bytes
MAX_HEADER_PAIRS = 256
SEND_CHUNK = 64 * 1024

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    CANCEL = 5
    INTERNAL_ERROR = 6
    STREAM_IN_USE = 8


class FrameError(Exception):
    """The peer sent bytes that are not valid SPDY/3.1 as we accept it; drop the connection."""


class StreamReset(Exception):
    """The stream was reset (by either side) or the connection went away."""


def _spdy3_dictionary() -> bytes:
    """The zlib dictionary of the SPDY/3 draft (section 2.6.10.1): length-prefixed words, then a tail."""
    # "|" separates the words because one of them ("200 OK") holds a space.
    words = ("options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|accept-language|"
             "accept-ranges|age|allow|authorization|cache-control|connection|content-base|content-encoding|"
             "content-language|content-length|content-location|content-md5|content-range|content-type|date|"
             "etag|expect|expires|from|host|if-match|if-modified-since|if-none-match|if-range|"
             "if-unmodified-since|last-modified|location|max-forwards|pragma|proxy-authenticate|"
             "proxy-authorization|range|referer|retry-after|server|te|trailer|transfer-encoding|upgrade|"
             "user-agent|vary|via|warning|www-authenticate|method|get|status|200 OK|version|HTTP/1.1|url|"
             "public|set-cookie|keep-alive|origin").split("|")
    tail = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _spdy3_dictionary()

Headers = tuple[tuple[str, str], ...]  # (lower-case name, value) in wire order


def header(headers: Headers, name: str) -> str | None:
    """First value of `name`, compared case-insensitively (Go peers canonicalise names)."""
    name = name.lower()
    for k, v in headers:
        if k == name:
            return v
    return None


# ---------------------------------------------------------------- frames


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    flags: int
    headers: Headers


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    flags: int
    headers: Headers


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    flags: int
    headers: Headers


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True)
class Ignored:
    frame_type: int          # SETTINGS, WINDOW_UPDATE, or an unknown control type (the spec says ignore)


@dataclass(frozen=True)
class Data:
    stream_id: int
    flags: int
    data: bytes


Frame = SynStream | SynReply | HeadersFrame | RstStream | Ping | GoAway | Ignored | Data


class HeaderCompressor:
    """Outgoing header blocks: one zlib stream for the connection, sync-flushed per frame."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                   DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        raw = [struct.pack(">I", len(headers))]
        for name, value in headers:
            n, v = name.lower().encode(), value.encode()
            raw += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        return self._z.compress(b"".join(raw)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """Incoming header blocks: one zlib stream for the connection, bounded in size."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as e:
            raise FrameError(f"bad header block compression: {e}") from None
        if len(raw) > MAX_HEADER_BLOCK or self._z.unconsumed_tail:
            raise FrameError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        return _parse_header_block(raw)


def _parse_header_block(raw: bytes) -> Headers:
    if len(raw) < 4:
        raise FrameError("header block shorter than its pair count")
    (count,), pos = struct.unpack_from(">I", raw), 4
    if count > MAX_HEADER_PAIRS:
        raise FrameError(f"header block has {count} pairs; at most {MAX_HEADER_PAIRS} accepted")
    out = []
    for _ in range(count):
        name, pos = _length_prefixed(raw, pos)
        value, pos = _length_prefixed(raw, pos)
        if not name:
            raise FrameError("empty header name")
        try:
            out.append((name.decode("ascii").lower(), value.decode("utf-8")))
        except UnicodeDecodeError:
            raise FrameError("header name or value is not text") from None
    if pos != len(raw):
        raise FrameError("trailing bytes after the header pairs")
    return tuple(out)


def _length_prefixed(raw: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(raw):
        raise FrameError("header block truncated")
    (n,) = struct.unpack_from(">I", raw, pos)
    end = pos + 4 + n
    if end > len(raw):
        raise FrameError("header block truncated")
    return raw[pos + 4:end], end


class FrameParser:
    """Bytes in, frames out. Keeps partial frames between `feed` calls."""

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max_payload = max_payload
        self._headers = HeaderDecompressor()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while len(self._buf) >= 8:
            length = int.from_bytes(self._buf[5:8], "big")
            if length > self._max_payload:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self._max_payload}")
            if len(self._buf) < 8 + length:
                break
            head, payload = bytes(self._buf[:8]), bytes(self._buf[8:8 + length])
            del self._buf[:8 + length]
            frames.append(self._parse(head, payload))
        return frames

    def _parse(self, head: bytes, payload: bytes) -> Frame:
        flags = head[4]
        if not head[0] & 0x80:
            stream_id = int.from_bytes(head[0:4], "big")
            if stream_id == 0:
                raise FrameError("DATA frame on stream 0")
            return Data(stream_id, flags, payload)
        version = int.from_bytes(head[0:2], "big") & 0x7FFF
        if version != VERSION:
            raise FrameError(f"SPDY version {version}; only 3 is spoken")
        kind = int.from_bytes(head[2:4], "big")
        return self._control(kind, flags, payload)

    def _control(self, kind: int, flags: int, p: bytes) -> Frame:
        if kind == FrameType.SYN_STREAM:
            _need(p, 10, "SYN_STREAM")
            sid, assoc = _id31(p, 0), _id31(p, 4)
            if sid == 0:
                raise FrameError("SYN_STREAM for stream 0")
            return SynStream(sid, assoc, p[8] >> 5, flags, self._headers.decompress(p[10:]))
        if kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
            _need(p, 4, "SYN_REPLY/HEADERS")
            cls = SynReply if kind == FrameType.SYN_REPLY else HeadersFrame
            return cls(_id31(p, 0), flags, self._headers.decompress(p[4:]))
        if kind == FrameType.RST_STREAM:
            _exact(p, 8, "RST_STREAM")
            return RstStream(_id31(p, 0), int.from_bytes(p[4:8], "big"))
        if kind == FrameType.PING:
            _exact(p, 4, "PING")
            return Ping(int.from_bytes(p, "big"))
        if kind == FrameType.GOAWAY:
            _exact(p, 8, "GOAWAY")
            return GoAway(_id31(p, 0), int.from_bytes(p[4:8], "big"))
        return Ignored(kind)


def _id31(p: bytes, pos: int) -> int:
    return int.from_bytes(p[pos:pos + 4], "big") & 0x7FFFFFFF


def _need(p: bytes, n: int, what: str) -> None:
    if len(p) < n:
        raise FrameError(f"{what} frame too short ({len(p)} bytes)")


def _exact(p: bytes, n: int, what: str) -> None:
    if len(p) != n:
        raise FrameError(f"{what} frame must be {n} bytes, got {len(p)}")


def _control_head(kind: FrameType, flags: int, length: int) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | length)


def encode_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def encode_rst(stream_id: int, status: int) -> bytes:
    return _control_head(FrameType.RST_STREAM, 0, 8) + struct.pack(">II", stream_id, status)


def encode_ping(ping_id: int) -> bytes:
    return _control_head(FrameType.PING, 0, 4) + struct.pack(">I", ping_id)


def encode_goaway(last_good: int, status: int = 0) -> bytes:
    return _control_head(FrameType.GOAWAY, 0, 8) + struct.pack(">II", last_good, status)


def encode_syn_reply(comp: HeaderCompressor, stream_id: int, headers: Headers = (), fin: bool = False) -> bytes:
    block = struct.pack(">I", stream_id) + comp.compress(headers)
    return _control_head(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, len(block)) + block


def encode_syn_stream(comp: HeaderCompressor, stream_id: int, headers: Headers, fin: bool = False) -> bytes:
    """Clients only; used by tests and the benchmark to speak to our server."""
    block = struct.pack(">IIBB", stream_id, 0, 0, 0) + comp.compress(headers)
    return _control_head(FrameType.SYN_STREAM, FLAG_FIN if fin else 0, len(block)) + block


# ---------------------------------------------------------------- connection

ByteSource = Callable[[], Awaitable[bytes]]   # next bytes from the peer; b"" at EOF
ByteSink = Callable[[bytes], Awaitable[None]]  # send bytes (waits while the peer is slow)

INBOX_FRAMES = 16  # per-stream queued DATA frames before the connection reader waits (backpressure)


@dataclass(eq=False)
class SpdyStream:
    """One client-opened stream. Reads return b"" at the peer's FIN or a reset."""

    conn: SpdyConnection
    stream_id: int
    headers: Headers
    inbox: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(INBOX_FRAMES))
    remote_closed: bool = False
    local_closed: bool = False
    reset: bool = False
    discard_input: bool = False   # the handler reads no more: drop incoming data instead of blocking

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    async def read(self) -> bytes:
        if self.reset and self.inbox.empty():
            return b""
        chunk = await self.inbox.get()
        if chunk is None:
            self.inbox.put_nowait(None)  # keep answering EOF to later reads
            return b""
        return chunk

    def stop_reading(self) -> None:
        """Incoming data is dropped from now on, so an unread stream never stalls the connection."""
        self.discard_input = True
        while not self.inbox.empty():
            self.inbox.get_nowait()
        if self.remote_closed:
            self.inbox.put_nowait(None)

    async def write(self, data: bytes) -> None:
        if self.reset or self.local_closed:
            raise StreamReset(f"stream {self.stream_id} is closed")
        for i in range(0, len(data), SEND_CHUNK):
            await self.conn.send(encode_data(self.stream_id, data[i:i + SEND_CHUNK]))

    async def close(self) -> None:
        """Half-close our side (FIN). Idempotent; a no-op after a reset."""
        if self.reset or self.local_closed:
            return
        self.local_closed = True
        await self.conn.send(encode_data(self.stream_id, b"", fin=True))
        self.conn.forget_if_done(self)

    async def reset_stream(self, status: int = RstStatus.CANCEL) -> None:
        if self.reset:
            return
        self._mark_reset()
        await self.conn.send(encode_rst(self.stream_id, status))

    def _mark_reset(self) -> None:
        self.reset = True
        self.remote_closed = self.local_closed = True
        self._push_eof()
        self.conn.forget(self)

    def _push_eof(self) -> None:
        while True:
            try:
                self.inbox.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.inbox.get_nowait()  # a reset discards unread data anyway


NewStreamHandler = Callable[[SpdyStream], Awaitable[bool]]  # False: refuse (RST_STREAM) the stream


class SpdyConnection:
    """Server side of one SPDY/3.1 connection over any byte transport."""

    def __init__(self, source: ByteSource, sink: ByteSink, on_stream: NewStreamHandler,
                 on_activity: Callable[[], None] = lambda: None) -> None:
        self._source = source
        self._sink = sink
        self._on_stream = on_stream
        self._on_activity = on_activity
        self._parser = FrameParser()
        self._compressor = HeaderCompressor()
        self._send_lock = asyncio.Lock()
        self._streams: dict[int, SpdyStream] = {}
        self._last_stream_id = 0
        self._closed = False
        self.goaway_received = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise StreamReset("connection closed")
        async with self._send_lock:
            self._on_activity()
            await self._sink(frame)

    async def _send_headers_frame(self, build: Callable[[HeaderCompressor], bytes]) -> None:
        # Compression state advances per frame: compress and send under one lock so order matches.
        if self._closed:
            raise StreamReset("connection closed")
        async with self._send_lock:
            await self._sink(build(self._compressor))

    async def serve(self) -> None:
        """Read frames until EOF, GOAWAY-and-idle or a protocol error (raised as FrameError)."""
        try:
            while True:
                data = await self._source()
                if not data:
                    return
                self._on_activity()
                for frame in self._parser.feed(data):
                    await self._dispatch(frame)
        finally:
            self._closed = True
            for stream in list(self._streams.values()):
                stream._mark_reset()

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            await self._on_data(frame)
        elif isinstance(frame, SynStream):
            await self._on_syn_stream(frame)
        elif isinstance(frame, RstStream):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._mark_reset()
        elif isinstance(frame, Ping):
            # Client pings are odd; echo any ping so the peer's liveness check passes.
            await self.send(encode_ping(frame.ping_id))
        elif isinstance(frame, GoAway):
            self.goaway_received = True
        elif isinstance(frame, HeadersFrame):
            if frame.flags & FLAG_FIN:
                await self._remote_fin(frame.stream_id)
        elif isinstance(frame, SynReply):
            raise FrameError(f"SYN_REPLY for stream {frame.stream_id}: this server opens no streams")
        # Ignored: SETTINGS, WINDOW_UPDATE, unknown control frames.

    async def _on_syn_stream(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if sid % 2 == 0 or sid <= self._last_stream_id:
            raise FrameError(f"SYN_STREAM id {sid} is not a new odd id (last was {self._last_stream_id})")
        self._last_stream_id = sid
        if self.goaway_received:
            await self.send(encode_rst(sid, RstStatus.REFUSED_STREAM))
            return
        stream = SpdyStream(self, sid, frame.headers)
        self._streams[sid] = stream
        if not await self._on_stream(stream):
            await stream.reset_stream(RstStatus.REFUSED_STREAM)
            return
        await self._send_headers_frame(lambda comp: encode_syn_reply(comp, sid))
        if frame.flags & FLAG_FIN:
            await self._remote_fin(sid)

    async def _on_data(self, frame: Data) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None or stream.remote_closed:
            # Data racing a reset is normal; data for a stream never opened is not, but one bad
            # stream is no reason to drop the others.
            if frame.stream_id > self._last_stream_id:
                await self.send(encode_rst(frame.stream_id, RstStatus.INVALID_STREAM))
            return
        if frame.data and not stream.discard_input:
            await stream.inbox.put(frame.data)
        if frame.flags & FLAG_FIN:
            await self._remote_fin(frame.stream_id)

    async def _remote_fin(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.remote_closed = True
        await stream.inbox.put(None)
        self.forget_if_done(stream)

    def forget(self, stream: SpdyStream) -> None:
        self._streams.pop(stream.stream_id, None)

    def forget_if_done(self, stream: SpdyStream) -> None:
        if stream.remote_closed and stream.local_closed:
            self.forget(stream)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def goaway(self) -> None:
        """Tell the peer we are done; best effort (the peer may already be gone)."""
        if self._closed:
            return
        try:
            await self.send(encode_goaway(self._last_stream_id))
        except (StreamReset, ConnectionError, OSError):
            pass
