"""Network namespaces pinned by a bind mount, made without forking the daemon.

A pod's network namespace must outlive any process in it (the pod shim may
restart, a pod may have no process yet), so it is pinned like CRI-O's
`pinns` and containerd's `pkg/netns` do: the namespace file of a task is
bind-mounted onto a plain file, and the path of that file is what the pod
shim joins and what CNI plugins receive as CNI_NETNS.

Why a dedicated thread: setns(2) and unshare(2) change the namespace of the
calling *thread* only. The daemon has gRPC and asyncio threads that must stay
in the host namespace, and it must never fork without exec (gRPC's threads
make that unsafe), so every namespace switch happens on a fresh
`threading.Thread` that exits when its work is done. The kernel drops the
thread's reference to the namespace when the thread ends; the bind mount
keeps the namespace alive. Python 3.11 has no os.setns/os.unshare, hence
ctypes.

A socket keeps the namespace it was created in: `run_in_netns` lets callers
create netlink sockets (pyroute2) inside a pod, and
`open_connection_in_netns` returns a TCP connection made from inside the pod
(port-forward).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from runtime.base import RuntimeFailure

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
NS_GET_NSTYPE = 0xB703      # _IO(0xb7, 0x3): which kind of namespace an nsfs file is
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name + ifr_flags, padded to 40 bytes
# The namespace file of the calling thread (not the process: the process stays in the host netns).
THREAD_NETNS = b"/proc/thread-self/ns/net"
USERNS_HELPER_TIMEOUT = 20.0


class NetnsFailure(RuntimeFailure):
    """Creating, entering or removing a network namespace failed."""


class _Libc:
    """The few libc calls Python 3.11 does not wrap; errno is kept per call."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        self._unshare = lib.unshare
        self._setns = lib.setns
        self._mount = lib.mount
        self._umount2 = lib.umount2
        self._mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
        self._umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

    @staticmethod
    def _check(result: int, what: str) -> None:
        if result != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")

    def unshare_net(self) -> None:
        self._check(self._unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")

    def setns_net(self, fd: int) -> None:
        self._check(self._setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")

    def bind_mount(self, source: bytes, target: bytes) -> None:
        self._check(self._mount(source, target, None, MS_BIND, None), f"bind mount onto {target.decode()}")

    def umount_detach(self, target: bytes) -> None:
        self._check(self._umount2(target, MNT_DETACH), f"umount {target.decode()}")


@functools.cache
def _libc() -> _Libc:
    return _Libc()


# ---------------------------------------------------------------- dedicated threads


def _on_fresh_thread(fn: Callable[[], T], name: str) -> T:
    """Run fn on a new OS thread that ends afterwards; return its result or raise its exception."""
    box: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            failure.append(e)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box[0]


async def _on_fresh_thread_async(fn: Callable[[], T], name: str) -> T:
    """Like _on_fresh_thread, awaited without blocking the event loop.

    Cancellation waits for the thread to finish (its work cannot be aborted
    half-way) and then re-raises, so a caller's undo step never races it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - delivered to the awaiting task
            loop.call_soon_threadsafe(deliver, None, e)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=body, name=name, daemon=True).start()
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


# ---------------------------------------------------------------- create / remove


def _set_loopback_up() -> None:
    """ip link set lo up, in the calling thread's netns (an ioctl: cheaper than a netlink socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = IFREQ.pack(b"lo", 0)
        flags = IFREQ.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, IFREQ.pack(b"lo", flags | IFF_UP))


def _pin_new_netns(path: Path, loopback_up: bool) -> None:
    libc = _libc()
    libc.unshare_net()
    libc.bind_mount(THREAD_NETNS, os.fsencode(path))
    if loopback_up:
        _set_loopback_up()


def _prepare_pin_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        raise NetnsFailure(f"cannot create network namespace at {path}: the path already exists") from None
    except OSError as e:
        raise NetnsFailure(f"cannot create network namespace pin file {path}: {e.strerror}") from None
    os.close(fd)


def _map_text(ranges: list[tuple[int, int, int]]) -> str:
    return "".join(f"{inside} {outside} {size}\n" for inside, outside, size in ranges)


async def create_in_new_userns_async(path: Path, uid_ranges: list[tuple[int, int, int]],
                                     gid_ranges: list[tuple[int, int, int]]) -> Path:
    """A new netns at `path` (a new file) owned by a new user namespace with these (container id, host id,
    size) ranges, loopback up. Made by the exec'd helper runtime.linux.userns_netns (see there why). On
    failure nothing is left (no mount, no file) and NetnsFailure says why."""
    _prepare_pin_file(path)
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": repo_root,
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-m", "runtime.linux.userns_netns", str(path), _map_text(uid_ranges),
            _map_text(gid_ranges), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/", start_new_session=True)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), USERNS_HELPER_TIMEOUT)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise NetnsFailure(f"cannot create the pod's network namespace in a user namespace: {reason[0]}")
        # Host root owns the new user namespace, so it may enter the netns from here.
        await run_in_netns_async(path, _set_loopback_up)
    except BaseException:
        remove(path)
        raise
    return path


def create(path: Path, *, loopback_up: bool = True) -> Path:
    """Create a new network namespace pinned at `path` (a new file; its directory must exist).

    The loopback interface is brought up unless `loopback_up` is false. On
    failure nothing is left: no mount, no file.
    """
    _prepare_pin_file(path)
    try:
        _on_fresh_thread(lambda: _pin_new_netns(path, loopback_up), "netns-create")
    except OSError as e:
        remove(path)
        raise NetnsFailure(f"cannot create network namespace at {path}: {e.strerror}") from None
    except BaseException:
        remove(path)
        raise
    return path


async def create_async(path: Path, *, loopback_up: bool = True) -> Path:
    """`create` without blocking the event loop; cancellation never leaves a pin behind."""
    _prepare_pin_file(path)
    try:
        await _on_fresh_thread_async(lambda: _pin_new_netns(path, loopback_up), "netns-create")
    except OSError as e:
        remove(path)
        raise NetnsFailure(f"cannot create network namespace at {path}: {e.strerror}") from None
    except BaseException:
        remove(path)
        raise
    return path


def remove(path: Path) -> None:
    """Unpin and delete `path`. Idempotent: a missing path or a plain file is fine.

    The namespace itself is freed by the kernel once nothing else (a process,
    another bind mount, an open fd) holds it.
    """
    target = os.fsencode(path)
    for _ in range(8):  # the same path may have been bind-mounted more than once
        try:
            _libc().umount_detach(target)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                break  # not (or no longer) a mount point
            raise NetnsFailure(f"cannot unmount network namespace {path}: {e.strerror}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NetnsFailure(f"cannot delete network namespace file {path}: {e.strerror}") from None


def is_netns(path: Path) -> bool:
    """True if `path` is a pinned (or /proc) network namespace file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def netns_id(path: Path) -> int:
    """The namespace's inode number (what `ls -L -i` and /proc/<pid>/ns/net show)."""
    return os.stat(path).st_ino


# ---------------------------------------------------------------- work inside a namespace


def _enter(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetnsFailure(f"cannot open network namespace {path}: {e.strerror}") from None
    try:
        _libc().setns_net(fd)
    except OSError as e:
        raise NetnsFailure(f"cannot enter network namespace {path}: {e.strerror} "
                           "(is it a pinned netns?)") from None
    finally:
        os.close(fd)


def _inside(path: Path, fn: Callable[[], T]) -> Callable[[], T]:
    def body() -> T:
        _enter(path)
        return fn()
    return body


def run_in_netns(path: Path, fn: Callable[[], T]) -> T:
    """Run fn on a dedicated thread inside the namespace pinned at `path`; blocks until it returns.

    Sockets fn creates stay in that namespace after it returns (netlink
    sockets of pyroute2's IPRoute, listening or connected TCP sockets).
    pyroute2 objects must be created and closed inside fn: they open
    per-thread sockets lazily.
    """
    return _on_fresh_thread(_inside(path, fn), "netns-run")


async def run_in_netns_async(path: Path, fn: Callable[[], T]) -> T:
    """`run_in_netns` awaited from the event loop (fn runs to completion even if the caller is cancelled)."""
    return await _on_fresh_thread_async(_inside(path, fn), "netns-run")


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _name, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.settimeout(None)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last if last is not None else OSError(errno.EADDRNOTAVAIL, f"no address for {host}")


def open_connection_in_netns(path: Path, host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A blocking TCP socket connected to host:port from inside the namespace pinned at `path`.

    Every address of `host` is tried in order (for "localhost": 127.0.0.1,
    then ::1, like containerd's port-forward). Raises ConnectionError/OSError
    with the reason when nothing answers.
    """
    return run_in_netns(path, lambda: _connect(host, port, timeout))


async def open_connection_in_netns_async(path: Path, host: str, port: int,
                                         timeout: float = 10.0) -> socket.socket:
    return await run_in_netns_async(path, lambda: _connect(host, port, timeout))


async def open_port_in_netns(path: Path, port: int, host: str = "localhost",
                             timeout: float = 10.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams to host:port inside the pod: the `open_port` the port-forward session needs."""
    sock = await open_connection_in_netns_async(path, host, port, timeout)
    try:
        sock.setblocking(False)
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
