"""The streaming HTTP/1.1 server behind the URLs that Exec, Attach and PortForward return.

One asyncio server in the daemon's event loop, on loopback by default:
kubelet proxies to it, crictl connects directly. Routes `GET` and `POST` on
`/exec/{token}`, `/attach/{token}` and `/portforward/{token}`; each token is
single-use. The request is then upgraded to SPDY/3.1 (`Upgrade: SPDY/3.1`,
negotiated with `X-Stream-Protocol-Version`) or to a WebSocket (negotiated with
`Sec-WebSocket-Protocol`), and the session runs against the injected
`StreamTarget` (the pod shim in the daemon, a stand-in in tests).

Everything that goes wrong on one connection (bad request, bad frames,
vanished client, idle timeout) ends that connection only, and its session's
process/pty is released by `IOSession.close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import h11

from cri_shim.config import StreamingConfig
from cri_shim.streaming import websocket as wsmod
from cri_shim.streaming.portforward import PROTOCOL as PORTFORWARD_PROTOCOL
from cri_shim.streaming.portforward import PortForwardSession
from cri_shim.streaming.remotecommand import (SPDY_PROTOCOLS, Channel, Channels, OpenSession, RemoteCommand,
                                              TerminalSize, expected_spdy_streams)
from cri_shim.streaming.requests import (AttachRequest, ExecRequest, PortForwardRequest, StreamRequest,
                                         validate_attach, validate_exec, validate_port_forward)
from cri_shim.streaming.spdy import FrameError, SpdyConnection, SpdyStream
from cri_shim.streaming.tokens import TokenCache
from runtime.base import ExecSpec, IOSession

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 16 * 1024
REQUEST_HEAD_TIMEOUT = 10.0
TOKEN_TTL = 60.0          # seconds a URL stays valid (the reference server's value)
CLOSE_WAIT = 2.0          # after our last frame, how long the client gets to read and hang up
PATH_RE = re.compile(r"^/(exec|attach|portforward)/([A-Za-z0-9_-]{1,64})$")


class StreamTarget(Protocol):
    """What the streaming server drives: the pod shim in the daemon."""

    async def open_exec(self, container_id: str, spec: ExecSpec, size: TerminalSize | None) -> IOSession:
        """Start the process. With `spec.tty`, `size` (width, height) is the client's terminal size: give the
        pty that size before the process starts, else the program may read 0x0 (`stty size` right away)."""
        ...

    async def open_attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool) -> IOSession: ...

    async def open_port(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to localhost:`port` in the pod's network namespace."""
        ...


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass
class _Activity:
    """Last time bytes moved on a connection, for the idle timeout."""

    last: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last = time.monotonic()


@dataclass(frozen=True)
class _Head:
    raw: bytes
    method: str
    path: str
    headers: list[tuple[str, str]]   # lower-case names

    def values(self, name: str) -> list[str]:
        """All values of a header, comma-separated lists split (repeated headers are common here)."""
        out = []
        for k, v in self.headers:
            if k == name:
                out += [p.strip() for p in v.split(",") if p.strip()]
        return out


class StreamingServer:
    """The daemon-facing API: start/stop, and URLs for validated requests."""

    def __init__(self, config: StreamingConfig, target: StreamTarget,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._target = target
        self._tokens: TokenCache[StreamRequest] = TokenCache(ttl=TOKEN_TTL, capacity=config.max_tokens,
                                                             clock=clock)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._base_url = ""
        self.sessions_running = 0   # exec/attach/port-forward sessions past the handshake

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self._config.address, self._config.port,
                                                  limit=MAX_REQUEST_HEAD, reuse_address=True)
        host, port = self._server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        self._base_url = f"http://{shown}:{port}"
        log.info("streaming server listening on %s", self._base_url)

    async def stop(self) -> None:
        """Stop listening and end every live session (their processes are released)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("streaming server not started")
        return self._base_url

    @property
    def live_connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------ URLs (raise cri_shim.errors on bad input)

    def exec_url(self, container_id: str, cmd: list[str] | tuple[str, ...], tty: bool, stdin: bool, stdout: bool,
                 stderr: bool) -> str:
        return self._url("exec", validate_exec(container_id, cmd, tty, stdin, stdout, stderr))

    def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        return self._url("attach", validate_attach(container_id, tty, stdin, stdout, stderr))

    def portforward_url(self, sandbox_id: str, ports: list[int] | tuple[int, ...] = ()) -> str:
        return self._url("portforward", validate_port_forward(sandbox_id, ports))

    def _url(self, kind: str, request: StreamRequest) -> str:
        return f"{self.base_url}/{kind}/{self._tokens.insert(request)}"

    # ------------------------------------------------------------ connections

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve_connection(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        activity = _Activity()
        watchdog = asyncio.ensure_future(self._idle_watch(activity, asyncio.current_task()))
        try:
            await self._handle(reader, writer, activity)
        except asyncio.CancelledError:
            if not watchdog.done():
                raise
            log.info("streaming: connection idle for %g s; closed", self._config.idle_timeout)
        except (FrameError, wsmod.WebSocketError) as e:
            log.info("streaming: closing connection: %s", e)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            log.debug("streaming: connection lost: %s", e)
        except Exception:  # a bug of ours must not take the server down; it is logged in full
            log.exception("streaming: unexpected error on a connection")
        finally:
            watchdog.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT)

    async def _idle_watch(self, activity: _Activity, task: asyncio.Task[None] | None) -> None:
        timeout = self._config.idle_timeout
        while True:
            left = activity.last + timeout - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(left)
        if task is not None:
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity) -> None:
        try:
            head = await self._read_head(reader)
            kind, request = self._route(head)
        except HttpError as e:
            await _respond_error(writer, e)
            return
        upgrade = " ".join(head.values("upgrade")).lower()
        if "websocket" in upgrade:
            await self._serve_websocket(head, kind, request, reader, writer, activity)
        elif "spdy/3.1" in upgrade:
            await self._serve_spdy(head, kind, request, reader, writer, activity)
        else:
            await _respond_error(writer, HttpError(400, "this URL needs an upgrade to SPDY/3.1 or WebSocket "
                                                        "(use crictl, kubectl or kubelet)"))

    async def _read_head(self, reader: asyncio.StreamReader) -> _Head:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request header larger than {MAX_REQUEST_HEAD} bytes") from None
        except TimeoutError:
            raise HttpError(408, "request header not received in time") from None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        conn.receive_data(raw)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise HttpError(400, f"malformed HTTP request: {e}") from None
        if not isinstance(event, h11.Request):
            raise HttpError(400, "malformed HTTP request")
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
        return _Head(raw, event.method.decode("ascii", "replace"), event.target.decode("ascii", "replace"), headers)

    def _route(self, head: _Head) -> tuple[str, StreamRequest]:
        path = head.path.split("?", 1)[0]
        match = PATH_RE.match(path)
        if match is None:
            raise HttpError(404, f"no such streaming endpoint {path!r}")
        if head.method not in ("GET", "POST"):
            raise HttpError(405, f"method {head.method} not allowed; use GET or POST",
                            [("Allow", "GET, POST")])
        kind, token = match.group(1), match.group(2)
        request = self._tokens.consume(token)
        if request is None or _kind_of(request) != kind:
            raise HttpError(404, "unknown, expired or already used streaming token; ask the runtime for a new URL")
        return kind, request

    # ------------------------------------------------------------ SPDY

    async def _serve_spdy(self, head: _Head, kind: str, request: StreamRequest, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, activity: _Activity) -> None:
        supported = (PORTFORWARD_PROTOCOL,) if kind == "portforward" else SPDY_PROTOCOLS
        protocol = _negotiate(head.values("x-stream-protocol-version"), supported, "X-Stream-Protocol-Version")
        if isinstance(protocol, HttpError):
            await _respond_error(writer, protocol)
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     b"X-Stream-Protocol-Version: " + protocol.encode() + b"\r\n\r\n")
        await writer.drain()

        async def source() -> bytes:
            return await reader.read(65536)

        async def sink(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        await self._run_spdy_session(source, sink, kind, request, protocol, activity)
        # Let the client read our last frames and hang up first; a reset would lose them.
        with contextlib.suppress(Exception):
            writer.write_eof()
            await asyncio.wait_for(_read_to_eof(reader), CLOSE_WAIT)

    async def _run_spdy_session(self, source: Callable[[], Awaitable[bytes]], sink: Callable[[bytes], Awaitable[None]],
                                kind: str, request: StreamRequest, protocol: str, activity: _Activity) -> None:
        if isinstance(request, PortForwardRequest):
            await self._run_spdy_portforward(source, sink, request, activity)
        else:
            await self._run_spdy_command(source, sink, request, protocol, activity)

    async def _run_spdy_command(self, source: Callable[[], Awaitable[bytes]], sink: Callable[[bytes], Awaitable[None]],
                                request: ExecRequest | AttachRequest, protocol: str, activity: _Activity) -> None:
        want = expected_spdy_streams(protocol, request.tty, request.stdin, request.stdout, request.stderr)
        streams: dict[str, SpdyStream] = {}
        all_here = asyncio.Event()

        async def on_stream(stream: SpdyStream) -> bool:
            kind = (stream.header("streamType") or "").lower()
            if kind not in want or kind in streams:
                log.info("streaming: refusing unexpected stream type %r", stream.header("streamType"))
                return False
            streams[kind] = stream
            if set(streams) == want:
                all_here.set()
            return True

        conn = SpdyConnection(source, sink, on_stream, activity.touch)
        await self._run_with_connection(conn.serve(), conn.goaway,
                                        lambda gone: self._command_after_streams(request, protocol, streams,
                                                                                 all_here, gone))

    async def _command_after_streams(self, request: ExecRequest | AttachRequest, protocol: str,
                                     streams: dict[str, SpdyStream], all_here: asyncio.Event,
                                     gone: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(all_here.wait())
        gone_waiter = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({waiter, gone_waiter}, timeout=self._config.stream_creation_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            gone_waiter.cancel()
        if not all_here.is_set():
            if not gone.is_set():
                log.info("streaming: client opened %s of its streams within %g s; closing",
                         sorted(streams), self._config.stream_creation_timeout)
            return
        channels = Channels(error=streams["error"], stdin=streams.get("stdin"), stdout=streams.get("stdout"),
                            stderr=streams.get("stderr"), resize=streams.get("resize"))
        await self._run_command(channels, request, protocol, gone)

    async def _run_command(self, channels: Channels, request: ExecRequest | AttachRequest, protocol: str,
                           gone: asyncio.Event) -> None:
        if isinstance(request, ExecRequest):
            spec = ExecSpec(args=request.cmd, tty=request.tty, stdin=request.stdin, stdout=request.stdout,
                            stderr=request.stderr and not request.tty)
            cmd = RemoteCommand(channels, protocol, request.tty, request.cmd, is_exec=True)
            opener: OpenSession = lambda size: self._target.open_exec(request.container_id, spec, size)
        else:
            cmd = RemoteCommand(channels, protocol, request.tty, (), is_exec=False)
            opener = lambda size: self._attach(request, size)
        self.sessions_running += 1
        try:
            await cmd.run(opener, gone)
        finally:
            self.sessions_running -= 1

    async def _attach(self, request: AttachRequest, size: TerminalSize | None) -> IOSession:
        session = await self._target.open_attach(request.container_id, request.stdin, request.stdout,
                                                 request.stderr and not request.tty)
        if size is not None:
            await session.resize(*size)  # the container's terminal follows the attaching client
        return session

    async def _run_spdy_portforward(self, source: Callable[[], Awaitable[bytes]],
                                    sink: Callable[[bytes], Awaitable[None]], request: PortForwardRequest,
                                    activity: _Activity) -> None:
        session = PortForwardSession(request.sandbox_id, self._target.open_port,
                                     self._config.stream_creation_timeout)
        conn = SpdyConnection(source, sink, session.on_stream, activity.touch)

        async def until_gone(gone: asyncio.Event) -> None:
            await gone.wait()

        self.sessions_running += 1
        try:
            await self._run_with_connection(conn.serve(), conn.goaway, until_gone)
        finally:
            self.sessions_running -= 1
            await session.close()

    async def _run_with_connection(self, serve: Awaitable[None], say_goodbye: Callable[[], Awaitable[None]],
                                   body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run the frame reader and the session side by side; whichever ends first ends both."""
        gone = asyncio.Event()
        reader = asyncio.ensure_future(serve)
        reader.add_done_callback(lambda _: gone.set())
        worker = asyncio.ensure_future(body(gone))
        try:
            await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
            if worker.done() and not reader.done():
                await say_goodbye()
            elif not worker.done():
                # The client left: the session notices `gone` and releases its process by itself.
                await asyncio.wait({worker}, timeout=CLOSE_WAIT)
        finally:
            for t in (reader, worker):
                t.cancel()
            results = await asyncio.gather(reader, worker, return_exceptions=True)
        for r in results:
            if isinstance(r, (FrameError, wsmod.WebSocketError)):
                raise r
            if isinstance(r, Exception) and not isinstance(r, (ConnectionError, OSError)):
                log.error("streaming: session failed", exc_info=r)

    # ------------------------------------------------------------ WebSocket

    async def _serve_websocket(self, head: _Head, kind: str, request: StreamRequest, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter, activity: _Activity) -> None:
        try:
            ws, ws_request = wsmod.start_handshake(head.raw)
        except wsmod.WebSocketError as e:
            await _respond_error(writer, HttpError(400, str(e)))
            return
        supported = wsmod.PORTFORWARD_PROTOCOLS if kind == "portforward" else wsmod.CHANNEL_PROTOCOLS
        protocol = _negotiate(ws_request.subprotocols, supported, "Sec-WebSocket-Protocol")
        if isinstance(protocol, HttpError):
            hdrs = [(k.encode(), v.encode()) for k, v in protocol.headers]
            writer.write(wsmod.reject_bytes(ws, protocol.status, protocol.message, hdrs))
            await writer.drain()
            return
        sock = wsmod.WebSocket(ws, reader, writer, activity.touch)
        await sock.accept(protocol)
        try:
            if isinstance(request, PortForwardRequest):
                await self._run_ws_tunnel(sock, request, activity)
            else:
                await self._run_ws_command(sock, request, protocol)
        finally:
            await sock.close()

    async def _run_ws_command(self, sock: wsmod.WebSocket, request: ExecRequest | AttachRequest,
                              protocol: str) -> None:
        mux = wsmod.ChannelMux(sock, protocol)
        ch = mux.channels

        def std(cid: int, wanted: bool) -> Channel | None:
            return ch[cid] if wanted else None

        channels = Channels(error=ch[3], stdin=std(0, request.stdin), stdout=std(1, request.stdout),
                            stderr=std(2, request.stderr and not request.tty), resize=std(4, request.tty))
        for cid, wanted in ((0, request.stdin), (4, request.tty)):
            if not wanted:
                ch[cid].stop_reading()
        # An empty message on the first output channel tells older clients the server is ready.
        ready = 1 if request.stdout else 2 if request.stderr and not request.tty else 3
        await mux.send(ready, b"")
        await self._run_with_connection(mux.serve(), _nothing,
                                        lambda gone: self._run_command(channels, request, protocol, gone))

    async def _run_ws_tunnel(self, sock: wsmod.WebSocket, request: PortForwardRequest, activity: _Activity) -> None:
        async def source() -> bytes:
            while True:
                msg = await sock.recv()
                if msg is None:
                    return b""
                if isinstance(msg, str):
                    raise wsmod.WebSocketError("text message in a SPDY tunnel")
                if msg:
                    return msg

        await self._run_spdy_portforward(source, sock.send_bytes, request, activity)


async def _nothing() -> None:
    return None


def _kind_of(request: StreamRequest) -> str:
    if isinstance(request, ExecRequest):
        return "exec"
    if isinstance(request, AttachRequest):
        return "attach"
    return "portforward"


def _negotiate(offered: list[str], supported: tuple[str, ...], header: str) -> str | HttpError:
    """The first protocol the client offers that we speak (the client's preference wins)."""
    if not offered:
        return HttpError(400, f"missing {header}: offer one of {', '.join(supported)}",
                         [("X-Accepted-Stream-Protocol-Versions", ", ".join(supported))])
    for p in offered:
        if p in supported:
            return p
    return HttpError(403, f"none of the requested protocols ({', '.join(offered)}) is supported; "
                          f"supported: {', '.join(supported)}",
                     [("X-Accepted-Stream-Protocol-Versions", ", ".join(supported))])


async def _respond_error(writer: asyncio.StreamWriter, err: HttpError) -> None:
    log.info("streaming: HTTP %d: %s", err.status, err.message)
    body = (err.message + "\n").encode()
    head = [f"HTTP/1.1 {err.status} {_REASONS.get(err.status, 'Error')}",
            "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in err.headers]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()


async def _read_to_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large"}
