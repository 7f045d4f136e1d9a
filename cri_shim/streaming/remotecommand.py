"""Exec and attach sessions: pump bytes between the client's channels and an `IOSession`.

Transport-neutral: SPDY streams and WebSocket channels both look like a
`Channel`. Order at the end follows what client-go expects: stdout/stderr are
written and half-closed, then the status goes on the error channel and it is
closed; the client reads output to EOF, then the error stream to EOF.

Status (error channel): v4/v5 send a metav1.Status JSON (`Success`, or
`NonZeroExitCode` with an `ExitCode` cause that crictl turns into its own exit
code); v2/v3 send plain text on failure only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.base import IOSession, StreamKind

log = logging.getLogger(__name__)

STREAM_ERROR, STREAM_STDIN, STREAM_STDOUT, STREAM_STDERR, STREAM_RESIZE = (
    "error", "stdin", "stdout", "stderr", "resize")

SPDY_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io")
JSON_STATUS_PROTOCOLS = ("v4.channel.k8s.io", "v5.channel.k8s.io", "v4.base64.channel.k8s.io")
MAX_RESIZE_BUFFER = 4096
FIRST_SIZE_WAIT = 0.5   # tty: how long to wait for the initial size before starting anyway
OUTPUT_GRACE = 2.0   # after the process exits, output still arriving within this gap is delivered


class Channel(Protocol):
    async def read(self) -> bytes:
        """Next chunk from the client; b"" at EOF."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Half-close our side."""
        ...

    def stop_reading(self) -> None:
        """Drop further input from the client for this channel."""
        ...


@dataclass
class Channels:
    error: Channel
    stdin: Channel | None = None
    stdout: Channel | None = None
    stderr: Channel | None = None
    resize: Channel | None = None


def expected_spdy_streams(protocol: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> frozenset[str]:
    """The stream types a client of `protocol` opens for these options (tty has no stderr stream)."""
    want = {STREAM_ERROR}
    if stdin:
        want.add(STREAM_STDIN)
    if stdout:
        want.add(STREAM_STDOUT)
    if stderr and not tty:
        want.add(STREAM_STDERR)
    if tty and protocol != "v2.channel.k8s.io":
        want.add(STREAM_RESIZE)
    return frozenset(want)


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None = None   # exec: the process's code; attach: None
    error: str | None = None       # a failure of ours (e.g. the container is gone)


def exit_status(code: int) -> int:
    """An exit code as the client parses it (uint8); -N (killed by signal N) becomes 128+N."""
    return 128 + (-code) if code < 0 else code & 0xFF


def status_message(protocol: str, outcome: Outcome, cmd: tuple[str, ...]) -> bytes:
    """What goes on the error channel for `outcome` in `protocol` (b"": nothing to send)."""
    if outcome.error is not None:
        text = f"Internal error occurred: {outcome.error}"
        if protocol not in JSON_STATUS_PROTOCOLS:
            return text.encode()
        return _json({"metadata": {}, "status": "Failure", "message": text, "reason": "InternalError",
                      "details": {"causes": [{"message": outcome.error}]}, "code": 500})
    code = exit_status(outcome.exit_code or 0)
    if code == 0:
        return _json({"metadata": {}, "status": "Success"}) if protocol in JSON_STATUS_PROTOCOLS else b""
    text = f"command terminated with non-zero exit code: error executing command {list(cmd)}, exit code {code}"
    if protocol not in JSON_STATUS_PROTOCOLS:
        return text.encode()
    return _json({"metadata": {}, "status": "Failure", "message": text, "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}})


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_resizes(buf: bytearray) -> list[tuple[int, int]]:
    """Complete `{"Width":W,"Height":H}` objects at the front of `buf` (consumed); ValueError if malformed."""
    decoder = json.JSONDecoder()
    out = []
    text = buf.decode("utf-8", errors="strict")
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            if text.rstrip().endswith("}"):
                raise ValueError(f"bad resize message {text[pos:pos + 80]!r}") from None
            break  # an object split across frames: wait for the rest
        out.append(_size(obj))
        pos = end
    del buf[:len(text[:pos].encode())]
    return out


def _size(obj: object) -> tuple[int, int]:
    if not isinstance(obj, dict):
        raise ValueError("resize message is not a JSON object")
    w, h = obj.get("Width"), obj.get("Height")
    if not (isinstance(w, int) and isinstance(h, int) and 0 <= w < 65536 and 0 <= h < 65536):
        raise ValueError(f"resize message needs uint16 Width and Height, got {obj!r}")
    return w, h


TerminalSize = tuple[int, int]  # (width, height)
OpenSession = Callable[[TerminalSize | None], Awaitable[IOSession]]  # gets the client's first terminal size


@dataclass
class RemoteCommand:
    """One exec or attach over already set-up channels."""

    channels: Channels
    protocol: str
    tty: bool
    cmd: tuple[str, ...]          # exec: for the status message; attach: ()
    is_exec: bool
    _output_seen: int = 0         # chunks delivered so far; lets the drain notice quiet output
    _resize_buf: bytearray = field(default_factory=bytearray)  # resize bytes not yet parsed

    async def run(self, open_session: OpenSession, client_gone: asyncio.Event) -> None:
        initial = await self._first_size()
        try:
            session = await open_session(initial)
        except Exception as e:  # noqa: BLE001 - any failure to start is reported to the client, not raised
            log.info("streaming: %s failed to start: %s", "exec" if self.is_exec else "attach", e)
            await self._finish(Outcome(error=getattr(e, "message", str(e))))
            return
        try:
            outcome = await self._pump(session, client_gone)
            if outcome is not None:
                await self._finish(outcome)
        finally:
            await session.close()

    async def _pump(self, session: IOSession, client_gone: asyncio.Event) -> Outcome | None:
        """Run until the process ends (exec) or output ends (attach); None if the client left first."""
        helpers = [asyncio.ensure_future(self._pump_stdin(session)),
                   asyncio.ensure_future(self._pump_resize(session))]
        output = asyncio.ensure_future(self._pump_output(session))
        gone = asyncio.ensure_future(client_gone.wait())
        exited = asyncio.ensure_future(session.wait())
        try:
            if self.is_exec:
                await asyncio.wait({exited, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    return None
                await self._drain_output(output, gone)
                return None if gone.done() else Outcome(exit_code=exited.result())
            await asyncio.wait({exited, output, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not gone.done() and exited.done():
                await self._drain_output(output, gone)
            return None if gone.done() else Outcome()
        finally:
            for t in (*helpers, output, gone, exited):
                t.cancel()
            await asyncio.gather(*helpers, output, gone, exited, return_exceptions=True)

    async def _drain_output(self, output: asyncio.Future[None], gone: asyncio.Future[Any]) -> None:
        # Output written just before exit is still in flight; stop once it ends or stays quiet.
        while not output.done() and not gone.done():
            mark = self._output_seen
            waiting: set[asyncio.Future[Any]] = {output, gone}
            await asyncio.wait(waiting, timeout=OUTPUT_GRACE, return_when=asyncio.FIRST_COMPLETED)
            if mark == self._output_seen:
                return

    async def _pump_output(self, session: IOSession) -> None:
        while True:
            item = await session.read()
            if item is None:
                return
            kind, data = item
            self._output_seen += 1
            target = self.channels.stdout if self.tty or kind is StreamKind.STDOUT else self.channels.stderr
            if target is not None and data:
                await target.write(data)

    async def _pump_stdin(self, session: IOSession) -> None:
        ch = self.channels.stdin
        if ch is None:
            return
        try:
            while chunk := await ch.read():
                await session.write_stdin(chunk)
            await session.close_stdin()
        except (OSError, EOFError) as e:
            log.debug("streaming: stdin ended: %s", e)
        finally:
            ch.stop_reading()

    async def _first_size(self) -> TerminalSize | None:
        """The client's terminal size, which clients send first thing; waits at most FIRST_SIZE_WAIT."""
        ch = self.channels.resize
        if ch is None or not self.tty:
            return None
        deadline = asyncio.get_running_loop().time() + FIRST_SIZE_WAIT
        try:
            while not (sizes := parse_resizes(self._resize_buf)):
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return None
                chunk = await asyncio.wait_for(ch.read(), left)
                if not chunk:
                    return None
                self._resize_buf += chunk
        except (TimeoutError, ValueError, UnicodeDecodeError):
            return None
        return sizes[-1]

    async def _pump_resize(self, session: IOSession) -> None:
        ch = self.channels.resize
        if ch is None:
            return
        buf = self._resize_buf
        try:
            for width, height in parse_resizes(buf):
                await session.resize(width, height)
            while chunk := await ch.read():
                buf += chunk
                if len(buf) > MAX_RESIZE_BUFFER:
                    raise ValueError("resize stream sent more than 4 KiB without a complete size")
                for width, height in parse_resizes(buf):
                    await session.resize(width, height)
        except (ValueError, UnicodeDecodeError) as e:
            log.info("streaming: ignoring the resize stream from now on: %s", e)
        finally:
            ch.stop_reading()

    async def _finish(self, outcome: Outcome) -> None:
        """Close the output channels, write the status, close the error channel (best effort)."""
        ch = self.channels
        with contextlib.suppress(Exception):
            for out in (ch.stdout, ch.stderr):
                if out is not None:
                    await out.close()
            status = status_message(self.protocol, outcome, self.cmd)
            if status:
                await ch.error.write(status)
            await ch.error.close()
            for inp in (ch.stdin, ch.resize):
                if inp is not None:
                    inp.stop_reading()
                    await inp.close()
