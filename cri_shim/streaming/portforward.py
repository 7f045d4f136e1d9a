"""Port-forward over SPDY (directly, or tunnelled in a WebSocket): stream pairs become TCP connections.

For every local connection the client opens an `error` stream, then a `data`
stream, both with headers `port` and `requestID`. Once both of a pair are here
we connect to the pod's port through the injected `open_port` and copy bytes
both ways over the data stream. Failures go to the error stream as text and
reset the pair; the other pairs on the connection carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cri_shim.streaming.spdy import RstStatus, SpdyStream, StreamReset

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
COPY_CHUNK = 64 * 1024
MAX_PAIRS = 1024     # concurrent forwarded connections per session

OpenPort = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass(eq=False)
class _Pair:
    request_id: str
    port: int
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class PortForwardSession:
    sandbox_id: str
    open_port: OpenPort
    creation_timeout: float
    _pairs: dict[str, _Pair] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def on_stream(self, stream: SpdyStream) -> bool:
        """Accept (True) or refuse (False: the connection resets it) a new stream."""
        kind = (stream.header("streamType") or "").lower()
        port = _port(stream.header("port"))
        if kind not in ("error", "data") or port is None:
            log.info("portforward: refusing stream %d: streamType=%r port=%r", stream.stream_id,
                     stream.header("streamType"), stream.header("port"))
            return False
        request_id = stream.header("requestID") or str(stream.stream_id if kind == "error" else stream.stream_id - 2)
        pair = self._pairs.get(request_id)
        if pair is None:
            if len(self._pairs) + len(self._tasks) >= MAX_PAIRS:
                log.info("portforward: refusing stream %d: %d connections in flight", stream.stream_id, MAX_PAIRS)
                return False
            pair = self._pairs[request_id] = _Pair(request_id, port)
            pair.timer = asyncio.get_running_loop().call_later(self.creation_timeout, self._expire, request_id)
        if getattr(pair, kind) is not None or pair.port != port:
            return False
        setattr(pair, kind, stream)
        if kind == "error":
            stream.stop_reading()  # the client never writes on it (it half-closes at once)
        if pair.error is not None and pair.data is not None:
            del self._pairs[request_id]
            if pair.timer is not None:
                pair.timer.cancel()
            task = asyncio.ensure_future(self._forward(pair.port, pair.error, pair.data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    def _expire(self, request_id: str) -> None:
        pair = self._pairs.pop(request_id, None)
        if pair is None:
            return
        log.info("portforward: request %s: the other stream of the pair never came; resetting", request_id)
        for s in (pair.error, pair.data):
            if s is not None:
                task = asyncio.ensure_future(s.reset_stream(RstStatus.CANCEL))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _forward(self, port: int, error: SpdyStream, data: SpdyStream) -> None:
        try:
            reader, writer = await asyncio.wait_for(self.open_port(self.sandbox_id, port), self.creation_timeout)
        except Exception as e:  # noqa: BLE001 - the reason goes to the client on its error stream
            reason = getattr(e, "message", None) or str(e) or type(e).__name__
            msg = f"error forwarding port {port} to pod {self.sandbox_id}: {reason}"
            log.info("portforward: %s", msg)
            with contextlib.suppress(StreamReset, ConnectionError, OSError):
                await error.write(msg.encode())
                await error.close()
                await data.reset_stream(RstStatus.CANCEL)
            return
        try:
            await self._copy(reader, writer, data)
            with contextlib.suppress(StreamReset, ConnectionError, OSError):
                await error.close()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: SpdyStream) -> None:
        up = asyncio.ensure_future(_client_to_pod(data, writer))
        try:
            # The pod side closing ends the forwarded connection; the client's FIN only half-closes.
            while chunk := await reader.read(COPY_CHUNK):
                await data.write(chunk)
            await data.close()
        except (StreamReset, ConnectionError, OSError) as e:
            log.debug("portforward: connection ended: %s", e)
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            data.stop_reading()

    async def close(self) -> None:
        for pair in self._pairs.values():
            if pair.timer is not None:
                pair.timer.cancel()
        self._pairs.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _client_to_pod(data: SpdyStream, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await data.read():
            writer.write(chunk)
            await writer.drain()
        if not data.reset and writer.can_write_eof():
            writer.write_eof()
        elif data.reset:
            writer.close()  # a reset aborts the connection: the pod side sees it at once
    except (ConnectionError, OSError) as e:
        log.debug("portforward: pod side closed: %s", e)
        data.stop_reading()


def _port(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    port = int(text)
    return port if 0 < port < 65536 else None
