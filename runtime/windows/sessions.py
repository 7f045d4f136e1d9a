"""Interactive exec and attach sessions (runtime.base.IOSession) over Windows processes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from runtime.base import StreamKind
from runtime.windows.procs import Proc
from runtime.windows.stdio import AsyncQueueListener, Broadcast, HandleIO, OutputPump

log = logging.getLogger(__name__)

POLL_MS = 500


def signed32(code: int) -> int:
    """A Windows exit code (uint32, e.g. 0xC000013A) as the int32 CRI carries."""
    code &= 0xFFFFFFFF
    return code - (1 << 32) if code & 0x80000000 else code


class ExecSession:
    """An interactive exec: its own process, stdio pumped to the caller, killed on close."""

    def __init__(self, loop: asyncio.AbstractEventLoop, io: HandleIO, proc: Proc, *, stdout: bool,
                 stderr: bool, name: str) -> None:
        self._loop = loop
        self._io = io
        self._proc = proc
        self._stdin = proc.stdin
        self._stdin_lock = threading.Lock()
        handles = [(h, k, want) for h, k, want in ((proc.stdout, StreamKind.STDOUT, stdout),
                                                   (proc.stderr, StreamKind.STDERR, stderr)) if h is not None]
        self._listener = AsyncQueueListener(loop, len(handles))
        self._pumps: list[OutputPump] = []
        for handle, kind, wanted in handles:
            broadcast = Broadcast()
            if wanted:
                broadcast.add(self._listener)
            else:
                broadcast.add(lambda k, d: self._listener(k, None) if d is None else None)
            self._pumps.append(OutputPump(io, handle, kind, None, broadcast, f"{name}-{kind.name.lower()}").start())
        if not handles:
            loop.call_soon(self._listener.queue.put_nowait, None)
        self._exit: asyncio.Future[int] = loop.create_future()
        self._closed = False
        threading.Thread(target=self._watch, name=f"{name}-wait", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                code = self._proc.wait(POLL_MS)
            except Exception as e:
                log.warning("exec wait failed: %s", e)
                code = 255
            if code is not None:
                break
        for pump in self._pumps:
            pump.join(2.0)
        try:
            self._loop.call_soon_threadsafe(self._finish, signed32(code))
        except RuntimeError:
            pass

    def _finish(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def write_stdin(self, data: bytes) -> None:
        stdin = self._stdin
        if stdin is None:
            raise BrokenPipeError("stdin is closed")
        await asyncio.to_thread(self._io.write, stdin, data)

    async def close_stdin(self) -> None:
        await asyncio.to_thread(self._close_stdin)

    def _close_stdin(self) -> None:
        with self._stdin_lock:
            stdin, self._stdin = self._stdin, None
        if stdin is None:
            return
        try:
            self._io.close(stdin)
        except OSError:
            pass
        try:
            self._proc.close_stdin()
        except Exception as e:          # the process may be gone already
            log.debug("close stdin: %s", e)

    async def read(self) -> tuple[StreamKind, bytes] | None:
        return await self._listener.queue.get()

    async def resize(self, width: int, height: int) -> None:
        await asyncio.to_thread(self._proc.resize, height, width)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_stdin)
        if not self._exit.done():
            await asyncio.to_thread(self._proc.terminate)
            await asyncio.shield(self._exit)
        await asyncio.to_thread(self._proc.close)


class AttachSession:
    """Attach to a container's main process: its output as it comes, its stdin if it was opened."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listeners: Broadcast, streams: int,
                 write: Callable[[bytes], None] | None, close_stdin: Callable[[], None] | None,
                 resize: Callable[[int, int], None], exited: asyncio.Event, exit_code: Callable[[], int],
                 wanted: set[StreamKind] | None = None) -> None:
        self._listeners = listeners
        self._queue_listener = AsyncQueueListener(loop, streams)
        self._wanted = {StreamKind.STDOUT, StreamKind.STDERR} if wanted is None else wanted
        self._forward: Callable[[StreamKind, bytes | None], None] = self._filtered
        listeners.add(self._forward)
        self._write = write
        self._close_stdin_fn = close_stdin
        self._resize = resize
        self._exited = exited
        self._exit_code = exit_code
        if streams == 0:
            loop.call_soon(self._queue_listener.queue.put_nowait, None)

    def _filtered(self, kind: StreamKind, data: bytes | None) -> None:
        # End-of-stream always passes, so read() ends when the container's output does.
        if data is None or kind in self._wanted:
            self._queue_listener(kind, data)

    async def write_stdin(self, data: bytes) -> None:
        if self._write is None:
            raise BrokenPipeError("the container's stdin is not open")
        await asyncio.to_thread(self._write, data)

    async def close_stdin(self) -> None:
        if self._close_stdin_fn is not None:
            await asyncio.to_thread(self._close_stdin_fn)
            self._write = None

    async def read(self) -> tuple[StreamKind, bytes] | None:
        return await self._queue_listener.queue.get()

    async def resize(self, width: int, height: int) -> None:
        await asyncio.to_thread(self._resize, height, width)

    async def wait(self) -> int:
        await self._exited.wait()
        return self._exit_code()

    async def close(self) -> None:
        self._listeners.remove(self._forward)
