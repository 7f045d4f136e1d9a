"""Container stdio: pumping output handles into the CRI log and to attached clients.

HCS (and a HostProcess job) hands back pipe HANDLEs owned by the caller. Each
output handle gets one thread (`OutputPump`) that reads until EOF, feeds the
CRI log writer and any attached listeners, then closes the handle exactly once.
How a HANDLE is read is platform-specific and injected as `HandleIO`:
`Win32HandleIO` uses `_winapi` on Windows (imported lazily, so this module
imports on Linux); `FdIO` reads file descriptors, which is what the fake HCS
hands out on Linux and what HostProcess children get on Windows.

The log writer is injected too (`LogSink`): the daemon passes the same CRI log
writer the Linux runtime uses, so the file format is identical.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from runtime.base import StreamKind

log = logging.getLogger(__name__)

READ_SIZE = 32 * 1024
ERROR_BROKEN_PIPE = 109
ERROR_NO_DATA = 232


class LogSink(Protocol):
    """The CRI log writer interface (runtime.logs.CriLogWriter satisfies it; the daemon injects it)."""

    def open(self) -> None: ...
    def feed(self, stream: str, data: bytes) -> None: ...
    def end(self, stream: str) -> None: ...
    def reopen(self) -> None: ...
    def close_file(self) -> None: ...


LogSinkFactory = Callable[[str | None], LogSink]


class HandleIO(Protocol):
    def read(self, handle: int, size: int) -> bytes:
        """Up to `size` bytes; b"" at end of stream (writer closed)."""
        ...

    def write(self, handle: int, data: bytes) -> None: ...

    def close(self, handle: int) -> None: ...


class FdIO:
    """Handles that are file descriptors (the fake HCS on Linux; CRT descriptors on Windows)."""

    def read(self, handle: int, size: int) -> bytes:
        try:
            return os.read(handle, size)
        except OSError:
            return b""

    def write(self, handle: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(handle, view):]

    def close(self, handle: int) -> None:
        os.close(handle)


def _win() -> Any:
    """The `_winapi` module (Windows only; loaded on first use so this module imports on Linux)."""
    return importlib.import_module("_winapi")


class Win32HandleIO:
    """Raw Win32 pipe HANDLEs from HCS (synchronous ReadFile; whether HCS opens them overlapped is unverified)."""

    def read(self, handle: int, size: int) -> bytes:
        _winapi = _win()
        try:
            data, _ = _winapi.ReadFile(handle, size)
        except BrokenPipeError:
            return b""
        except OSError as e:
            if getattr(e, "winerror", None) in (ERROR_BROKEN_PIPE, ERROR_NO_DATA):
                return b""
            raise
        return bytes(data)

    def write(self, handle: int, data: bytes) -> None:
        _winapi = _win()
        view = memoryview(data)
        while view:
            written, _ = _winapi.WriteFile(handle, bytes(view))
            view = view[written:]

    def close(self, handle: int) -> None:
        _winapi = _win()
        _winapi.CloseHandle(handle)


Listener = Callable[[StreamKind, bytes | None], None]   # None = that stream reached EOF


class Broadcast:
    """Attached clients of one container's output."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def send(self, kind: StreamKind, data: bytes | None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(kind, data)
            except Exception:   # a broken listener must not stop the log
                log.exception("attach listener failed")


class OutputPump:
    """One output handle -> the log sink and listeners, on its own thread; closes the handle at EOF."""

    def __init__(self, io: HandleIO, handle: int, kind: StreamKind, sink: LogSink | None,
                 listeners: Broadcast | None, name: str) -> None:
        self._io = io
        self._handle = handle
        self.kind = kind
        self._sink = sink
        self._listeners = listeners
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> OutputPump:
        self._thread.start()
        return self

    def join(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def _run(self) -> None:
        stream = "stdout" if self.kind is StreamKind.STDOUT else "stderr"
        try:
            while True:
                data = self._io.read(self._handle, READ_SIZE)
                if not data:
                    break
                if self._sink is not None:
                    self._sink.feed(stream, data)
                if self._listeners is not None:
                    self._listeners.send(self.kind, data)
        except Exception:
            log.exception("reading container %s failed", stream)
        finally:
            if self._sink is not None:
                self._sink.end(stream)
            if self._listeners is not None:
                self._listeners.send(self.kind, None)
            try:
                self._io.close(self._handle)
            except OSError:
                pass
            self.done.set()


class Collector:
    """Output of an ExecSync: kept up to `cap` bytes per stream, the rest read and dropped."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._lock = threading.Lock()
        self.data: dict[StreamKind, bytearray] = {StreamKind.STDOUT: bytearray(), StreamKind.STDERR: bytearray()}

    def __call__(self, kind: StreamKind, chunk: bytes | None) -> None:
        if chunk is None:
            return
        with self._lock:
            buf = self.data[kind]
            room = self._cap - len(buf)
            if room > 0:
                buf += chunk[:room]


class AsyncQueueListener:
    """Bridges pump threads to an asyncio consumer (interactive exec and attach)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, streams: int) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[tuple[StreamKind, bytes] | None] = asyncio.Queue()
        self._open = streams
        self._lock = threading.Lock()

    def __call__(self, kind: StreamKind, data: bytes | None) -> None:
        if data is not None:
            self._put((kind, data))
            return
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self._put(None)

    def _put(self, item: tuple[StreamKind, bytes] | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:      # the loop is closed: nobody is listening any more
            pass
