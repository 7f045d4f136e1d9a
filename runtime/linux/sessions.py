"""IOSession implementations for exec (fds handed over by the shim) and attach (a shim stream)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
from collections.abc import Awaitable, Callable

from runtime import base
from runtime.linux import protocol as proto
from runtime.linux import protocol_aio as aio
from runtime.linux import syscalls as sc

Chunk = tuple[base.StreamKind, bytes]
READ_CHUNK = 64 * 1024


class ExecSession:
    """An exec'd process whose pipes (or pty master) the daemon holds directly; the shim reaps it."""

    def __init__(self, *, stdin: int, outputs: dict[int, base.StreamKind], pty: int,
                 wait_exit: Callable[[], Awaitable[int]], kill: Callable[[int], Awaitable[None]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stdin = stdin
        self._pty = pty
        self._outputs = dict(outputs)
        self._queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self._open_outputs = len(self._outputs)
        self._wait_exit = wait_exit
        self._kill = kill
        self._exit: asyncio.Task[int] | None = None
        self._closed = False
        for fd in (*self._outputs, stdin):
            if fd >= 0:
                os.set_blocking(fd, False)
        for fd, kind in self._outputs.items():
            self._loop.add_reader(fd, self._on_readable, fd, kind)
        if not self._outputs:
            self._queue.put_nowait(None)

    def _on_readable(self, fd: int, kind: base.StreamKind) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO from a pty master once the process side is gone
        if data:
            self._queue.put_nowait((kind, data))
            return
        self._loop.remove_reader(fd)
        self._open_outputs -= 1
        if fd != self._pty:
            os.close(fd)
        self._outputs.pop(fd, None)
        if self._open_outputs == 0:
            self._queue.put_nowait(None)

    async def read(self) -> Chunk | None:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stay at EOF for later readers
        return item

    async def write_stdin(self, data: bytes) -> None:
        fd = self._pty if self._pty >= 0 else self._stdin
        if fd < 0:
            raise base.WrongState("this exec session has no stdin")
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                await _writable(self._loop, fd)

    async def close_stdin(self) -> None:
        if self._pty >= 0:
            await self.write_stdin(b"\x04")  # a terminal's end of input is ^D, not a closed fd
        elif self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1

    async def resize(self, width: int, height: int) -> None:
        if self._pty < 0:
            raise base.WrongState("this exec session has no terminal")
        fcntl.ioctl(self._pty, sc.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def wait(self) -> int:
        if self._exit is None:
            self._exit = asyncio.ensure_future(self._wait_exit())
        return await asyncio.shield(self._exit)

    async def kill_group(self, sig: int = signal.SIGKILL) -> None:
        await self._kill(sig)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._exit is None or not self._exit.done():
            with contextlib.suppress(base.RuntimeFailure):
                await self._kill(signal.SIGKILL)
        for fd in list(self._outputs):
            self._loop.remove_reader(fd)
            if fd != self._pty:
                os.close(fd)
        self._outputs.clear()
        for fd in (self._stdin, self._pty):
            if fd >= 0:
                os.close(fd)
        self._stdin = self._pty = -1
        if self._exit is not None and not self._exit.done():
            self._exit.cancel()


class AttachSession:
    """Frames from the shim's attach stream; the container's stdio stays with the shim."""

    def __init__(self, sock: socket.socket, tty: bool) -> None:
        self._sock = sock
        self.tty = tty
        self._queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read_loop())
        self._closed = False

    async def _read_loop(self) -> None:
        try:
            while True:
                data, fds = await aio.arecv_raw(self._sock)
                for fd in fds:
                    os.close(fd)
                if not data:
                    break
                channel, payload = data[0], data[1:]
                if channel in (proto.STDOUT, proto.STDERR):
                    kind = base.StreamKind.STDOUT if channel == proto.STDOUT else base.StreamKind.STDERR
                    self._queue.put_nowait((kind, payload))
                elif channel == proto.CONTROL:
                    msg = proto.decode(payload)
                    if "exit" in msg and not self._exit.done():
                        self._exit.set_result(int(msg["exit"]))
        except (OSError, proto.ProtocolError):
            pass
        finally:
            self._queue.put_nowait(None)
            if not self._exit.done():
                self._exit.set_result(-1)  # detached without the container exiting

    async def read(self) -> Chunk | None:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
        return item

    async def write_stdin(self, data: bytes) -> None:
        for i in range(0, len(data), proto.FRAME_DATA_MAX):
            await self._send(proto.frame(proto.STDIN, data[i:i + proto.FRAME_DATA_MAX]))

    async def close_stdin(self) -> None:
        await self._send(proto.frame(proto.CLOSE_STDIN))

    async def resize(self, width: int, height: int) -> None:
        await self._send(proto.frame(proto.CONTROL, proto.encode({"resize": [width, height]})))

    async def _send(self, data: bytes) -> None:
        if self._closed:
            raise base.WrongState("the attach session is closed")
        try:
            await aio.asend_raw(self._sock, data)
        except OSError as e:
            raise base.MonitorLost(f"the attach stream broke: {e.strerror}") from None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._sock.close()


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, lambda: _resolve(fut))
    try:
        await fut
    finally:
        loop.remove_writer(fd)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
