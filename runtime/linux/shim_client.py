"""Daemon-side clients of the zygote and of pod shims (asyncio, bounded by timeouts).

Every call opens its own connection to the shim's socket, so one slow call
(a `wait`) never holds up another, and every call has a deadline so one broken
shim never blocks the daemon. Errors in replies become `runtime.base` failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime import base
from runtime.linux import protocol as proto
from runtime.linux import protocol_aio as aio

log = logging.getLogger(__name__)

ZYGOTE_SOCKET = "zygote.sock"


def failure_from_reply(reply: dict[str, Any]) -> base.RuntimeFailure:
    err = reply.get("error") or {}
    kind, message, field = err.get("kind"), str(err.get("message", "unknown error")), err.get("field")
    if kind == proto.NOT_FOUND:
        return base.ObjectNotFound(message)
    if kind == proto.INVALID_SPEC:
        return base.InvalidSpec(field or "spec", message)
    if kind == proto.UNSUPPORTED:
        return base.Unsupported(f"{field}: {message}" if field else message)
    if kind == proto.WRONG_STATE:
        return base.WrongState(message)
    return base.RuntimeFailure(f"{field}: {message}" if field else message)


class ShimClient:
    def __init__(self, sandbox_id: str, sock_path: str, timeout: float) -> None:
        self.sandbox_id = sandbox_id
        self.sock_path = sock_path
        self.timeout = timeout

    async def connect(self) -> socket.socket:
        try:
            return await asyncio.wait_for(aio.aconnect(self.sock_path), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise base.MonitorLost(f"the pod shim of sandbox {self.sandbox_id} is not reachable: "
                                   f"{_describe(e)}") from None

    async def call(self, op: str, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        reply, fds = await self.call_fds(op, timeout, **params)
        for fd in fds:
            os.close(fd)
        return reply

    async def call_fds(self, op: str, timeout: float | None = None, **params: Any) -> tuple[dict[str, Any], list[int]]:
        """One request; `timeout` None = the client's default, 0 = no deadline (waits)."""
        limit = self.timeout if timeout is None else (timeout or None)
        sock = await self.connect()
        try:
            return await asyncio.wait_for(self._exchange(sock, op, params), limit)
        except asyncio.TimeoutError:
            raise base.OperationTimeout(f"the pod shim of sandbox {self.sandbox_id} did not answer {op!r} "
                                        f"within {limit:.0f}s") from None
        finally:
            sock.close()

    async def _exchange(self, sock: socket.socket, op: str, params: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        try:
            await aio.asend(sock, proto.request(op, **params))
            reply, fds = await aio.arecv(sock)
        except OSError as e:
            raise base.MonitorLost(f"the pod shim of sandbox {self.sandbox_id} failed during {op!r}: "
                                   f"{_describe(e)}") from None
        if reply is None:
            raise base.MonitorLost(f"the pod shim of sandbox {self.sandbox_id} closed the connection "
                                   f"during {op!r} (did it die?)")
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise failure_from_reply(reply)
        return reply, fds

    async def open_stream(self, op: str, **params: Any) -> tuple[socket.socket, dict[str, Any]]:
        """A request whose connection stays open afterwards (events, attach)."""
        sock = await self.connect()
        try:
            reply, fds = await asyncio.wait_for(self._exchange(sock, op, params), self.timeout)
            for fd in fds:
                os.close(fd)
        except BaseException:
            sock.close()
            raise
        return sock, reply


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno)
    return str(e) or type(e).__name__


class Zygote:
    """The warm parent of pod shims: started once (exec'd, never forked by the daemon), reused after a
    daemon restart if it is still alive and set up the same way (`ksm`), and stopped on close()."""

    def __init__(self, state_dir: Path, python: str = sys.executable, timeout: float = 10.0,
                 log_level: str = "warning", ksm: bool = False) -> None:
        self.log_level = log_level
        self.ksm = ksm
        self.sock_path = str(state_dir / ZYGOTE_SOCKET)
        self.pid_path = self.sock_path + ".pid"
        self.log_path = str(state_dir / "zygote.log")
        self.python = python
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()
        self._ready = False

    async def ensure(self) -> None:
        async with self._lock:
            if self._ready and await self._ping():
                return
            self._ready = False
            if not await self._ping():
                self._kill_stale()
                await self._start()
            self._ready = True

    async def spawn(self, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Fork a pod shim; the shim itself answers once its namespaces and socket are ready."""
        await self.ensure()
        try:
            sock = await asyncio.wait_for(aio.aconnect(self.sock_path), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            self._ready = False
            raise base.RuntimeFailure(f"the shim zygote is not reachable: {_describe(e)}") from None
        try:
            await aio.asend(sock, proto.request("spawn", config=config))
            reply, fds = await asyncio.wait_for(aio.arecv(sock), timeout)
        except asyncio.TimeoutError:
            raise base.OperationTimeout(f"the pod shim did not report ready within {timeout:.0f}s") from None
        except OSError as e:
            raise base.RuntimeFailure(f"spawning the pod shim failed: {_describe(e)}") from None
        finally:
            sock.close()
        for fd in fds:
            os.close(fd)
        if reply is None:
            raise base.MonitorLost(f"the pod shim died while starting (see {self.log_path})")
        if not reply.get("ok"):
            raise failure_from_reply(reply)
        return reply

    async def _ping(self) -> bool:
        try:
            sock = await asyncio.wait_for(aio.aconnect(self.sock_path), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            await aio.asend(sock, proto.request("ping"))
            reply, _ = await asyncio.wait_for(aio.arecv(sock), 2.0)
            return bool(reply and reply.get("ok") and reply.get("version") == proto.VERSION
                        and bool(reply.get("ksm")) == self.ksm)
        except (OSError, asyncio.TimeoutError, proto.ProtocolError):
            return False
        finally:
            sock.close()

    async def _start(self) -> None:
        repo_root = str(Path(__file__).resolve().parents[2])
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": repo_root,
               "PYTHONDONTWRITEBYTECODE": "1"}
        with open(self.log_path, "ab") as logf:
            # start_new_session: its own session, so the daemon's terminal or unit signals never reach it.
            self._proc = subprocess.Popen(
                [self.python, "-S", "-m", "runtime.linux.zygote", self.sock_path, self.log_level,
                 *(["ksm"] if self.ksm else [])],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env, cwd="/",
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise base.RuntimeFailure(f"the shim zygote exited with {self._proc.returncode}; "
                                          f"see {self.log_path}")
            if await self._ping():
                return
            await asyncio.sleep(0.01)
        raise base.OperationTimeout(f"the shim zygote did not start within {self.timeout:.0f}s")

    def _kill_stale(self) -> None:
        """A zygote from an earlier daemon that no longer answers: end it (only if it is really ours)."""
        pid = _read_pid(self.pid_path)
        if pid and _cmdline_has(pid, self.sock_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)

    async def stop(self) -> None:
        async with self._lock:
            self._ready = False
            pid = _read_pid(self.pid_path)
            try:
                sock = await asyncio.wait_for(aio.aconnect(self.sock_path), 1.0)
                try:
                    await aio.asend(sock, proto.request("stop"))
                    await asyncio.wait_for(aio.arecv(sock), 2.0)
                finally:
                    sock.close()
            except (OSError, asyncio.TimeoutError, proto.ProtocolError):
                if pid and _cmdline_has(pid, self.sock_path):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                await asyncio.to_thread(self._proc.wait)
                self._proc = None
            elif pid:
                await wait_pid_gone(pid, 5.0)
            for path in (self.sock_path, self.pid_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _read_pid(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return 0


def _cmdline_has(pid: int, needle: str) -> bool:
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie waiting for its reaper is dead for our purposes.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (pidfd when possible, else polling)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        if e.errno == errno.ESRCH:
            return True
        pidfd = -1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if pidfd >= 0:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, lambda: _resolve(fut))
            try:
                await asyncio.wait_for(fut, timeout)
                return True
            except asyncio.TimeoutError:
                return False
            finally:
                loop.remove_reader(pidfd)
        while loop.time() < deadline:
            if not pid_alive(pid):
                return True
            await asyncio.sleep(0.01)
        return not pid_alive(pid)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
