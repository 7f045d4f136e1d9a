"""A `StreamTarget` that runs real host processes: the stand-in for the pod shim in streaming tests.

The streaming server is the thing under test; until the integrator wires the
Linux pod shim (whose exec/attach return the same `IOSession`), exec runs the
command as a plain host process (a pty from os.openpty for tty, pipes
otherwise), attach connects to a long-running host process started with
`start_container`, and port-forward connects to 127.0.0.1:port. Everything
here is real: processes, ptys, pipes, TCP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from dataclasses import dataclass, field

from runtime.base import ExecSpec, IOSession, ObjectNotFound, StreamKind, WrongState

Chunk = tuple[StreamKind, bytes] | None


class _PtyIO:
    """The master side of a pty on the event loop. Reads end at EIO (the slave side is gone)."""

    def __init__(self, master: int, queue: asyncio.Queue[Chunk]) -> None:
        self.fd = master
        self._queue = queue
        os.set_blocking(master, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master, self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if data:
            self._queue.put_nowait((StreamKind.STDOUT, data))
        else:
            self.stop()
            self._queue.put_nowait(None)

    def stop(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.fd)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.005)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass(eq=False)
class ExecSession:
    """IOSession of one host process."""

    proc: asyncio.subprocess.Process
    pty: _PtyIO | None
    queue: asyncio.Queue[Chunk]
    open_outputs: int
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    async def write_stdin(self, data: bytes) -> None:
        if self.pty is not None:
            await self.pty.write(data)
        elif self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.pty is not None:
            await self.pty.write(b"\x04")  # a terminal has no half-close: EOF is ^D to the line discipline
        elif self.proc.stdin is not None:
            self.proc.stdin.close()

    async def read(self) -> tuple[StreamKind, bytes] | None:
        while self.open_outputs:
            item = await self.queue.get()
            if item is not None:
                return item
            self.open_outputs -= 1
        return None

    async def resize(self, width: int, height: int) -> None:
        if self.pty is not None:
            fcntl.ioctl(self.pty.fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def wait(self) -> int:
        return await self.proc.wait()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        for p in self.pumps:
            p.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        if self.pty is not None:
            self.pty.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


async def _pump(stream: asyncio.StreamReader, kind: StreamKind, queue: asyncio.Queue[Chunk]) -> None:
    try:
        while data := await stream.read(65536):
            await queue.put((kind, data))
    finally:
        queue.put_nowait(None)


async def spawn_exec(spec: ExecSpec, size: tuple[int, int] | None = None) -> ExecSession:
    queue: asyncio.Queue[Chunk] = asyncio.Queue()
    if spec.tty:
        master, slave = os.openpty()
        if size is not None:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        try:
            proc = await asyncio.create_subprocess_exec(*spec.args, stdin=slave, stdout=slave, stderr=slave,
                                                        start_new_session=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return ExecSession(proc, _PtyIO(master, queue), queue, open_outputs=1)
    pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(*spec.args, stdin=pipe if spec.stdin else null,
                                                stdout=pipe, stderr=pipe if spec.stderr else null,
                                                start_new_session=True)
    session = ExecSession(proc, None, queue, open_outputs=0)
    for stream, kind in ((proc.stdout, StreamKind.STDOUT), (proc.stderr, StreamKind.STDERR)):
        if stream is not None:
            session.open_outputs += 1
            session.pumps.append(asyncio.ensure_future(_pump(stream, kind, queue)))
    return session


# ---------------------------------------------------------------- attach


@dataclass(eq=False)
class Container:
    """A long-running host process standing in for a container's main process and its held stdio."""

    proc: asyncio.subprocess.Process
    stdin_once: bool
    log: bytearray = field(default_factory=bytearray)
    attachers: set[AttachSession] = field(default_factory=set)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    outputs_open: int = 2

    def fan_out(self, item: Chunk) -> None:
        if item is None:
            self.outputs_open -= 1
            if self.outputs_open:
                return
        else:
            self.log += item[1]  # output keeps going to the log while attached
        for a in list(self.attachers):
            a.deliver(item)

    async def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        await asyncio.gather(*self.pumps, return_exceptions=True)


@dataclass(eq=False)
class AttachSession:
    container: Container
    stdin: bool
    stdout: bool
    stderr: bool
    queue: asyncio.Queue[Chunk] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, item: Chunk) -> None:
        if item is None:
            self.queue.put_nowait(None)
        elif (item[0] is StreamKind.STDOUT and self.stdout) or (item[0] is StreamKind.STDERR and self.stderr):
            self.queue.put_nowait(item)

    async def write_stdin(self, data: bytes) -> None:
        stdin = self.container.proc.stdin
        if self.stdin and stdin is not None and not stdin.is_closing():
            stdin.write(data)
            await stdin.drain()

    async def close_stdin(self) -> None:
        if self.stdin and self.container.stdin_once:
            await self.container.close_stdin()

    async def read(self) -> tuple[StreamKind, bytes] | None:
        if self.done.is_set():
            return None
        return await self.queue.get()

    async def resize(self, width: int, height: int) -> None:
        return None

    async def wait(self) -> int:
        waiter = asyncio.ensure_future(self.container.proc.wait())
        done = asyncio.ensure_future(self.done.wait())
        await asyncio.wait({waiter, done}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        done.cancel()
        return self.container.proc.returncode or 0

    async def close(self) -> None:
        if self.done.is_set():
            return
        self.done.set()
        self.queue.put_nowait(None)
        self.container.attachers.discard(self)
        # stdin_once: the first attacher with stdin leaving closes the container's stdin.
        await self.close_stdin()


# ---------------------------------------------------------------- the target


@dataclass
class HostProcessTarget:
    """StreamTarget over host processes; `containers` maps ids to attachable processes."""

    containers: dict[str, Container] = field(default_factory=dict)
    exec_sessions: set[ExecSession] = field(default_factory=set)
    refuse_ports: set[int] = field(default_factory=set)
    execs_started: int = 0

    async def start_container(self, container_id: str, args: list[str], stdin_once: bool = False) -> Container:
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(*args, stdin=pipe, stdout=pipe, stderr=pipe,
                                                    start_new_session=True)
        c = Container(proc, stdin_once)
        for stream, kind in ((proc.stdout, StreamKind.STDOUT), (proc.stderr, StreamKind.STDERR)):
            assert stream is not None
            c.pumps.append(asyncio.ensure_future(_container_pump(stream, kind, c)))
        self.containers[container_id] = c
        return c

    async def open_exec(self, container_id: str, spec: ExecSpec, size: tuple[int, int] | None) -> IOSession:
        if container_id.startswith("missing"):
            raise ObjectNotFound(f"container {container_id} not found")
        session = await spawn_exec(spec, size)
        self.execs_started += 1
        self.exec_sessions.add(session)
        proc = session.proc

        async def forget() -> None:
            await proc.wait()
            self.exec_sessions.discard(session)
        asyncio.ensure_future(forget())
        return session

    async def open_attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool) -> IOSession:
        c = self.containers.get(container_id)
        if c is None:
            raise ObjectNotFound(f"container {container_id} not found")
        if c.proc.returncode is not None:
            raise WrongState(f"container {container_id} is not running")
        session = AttachSession(c, stdin, stdout, stderr)
        c.attachers.add(session)
        return session

    async def open_port(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if port in self.refuse_ports:
            raise ConnectionRefusedError(f"connection to 127.0.0.1:{port} refused")
        return await asyncio.open_connection("127.0.0.1", port)

    async def shutdown(self) -> None:
        for c in self.containers.values():
            await c.stop()
        for s in list(self.exec_sessions):
            await s.close()


async def _container_pump(stream: asyncio.StreamReader, kind: StreamKind, c: Container) -> None:
    try:
        while data := await stream.read(65536):
            c.fan_out((kind, data))
    finally:
        c.fan_out(None)
