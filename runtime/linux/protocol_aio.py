"""The daemon's (asyncio) side of runtime.linux.protocol.

Kept apart so the zygote and the pod shims never import asyncio: every module a
shim imports costs memory in each of them (see runtime.linux.shim).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from runtime.linux.protocol import close_fds, decode, encode, new_socket, recv_raw, send_raw


async def aconnect(path: str) -> socket.socket:
    sock = new_socket()
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


async def asend_raw(sock: socket.socket, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            send_raw(sock, data, fds)
            return
        except BlockingIOError:
            await _wait(loop, sock, writable=True)


async def asend(sock: socket.socket, obj: dict[str, Any]) -> None:
    await asend_raw(sock, encode(obj))


async def arecv_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return recv_raw(sock)
        except BlockingIOError:
            await _wait(loop, sock, writable=False)


async def arecv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    data, fds = await arecv_raw(sock)
    if not data:
        close_fds(fds)
        return None, []
    return decode(data), fds


async def _wait(loop: asyncio.AbstractEventLoop, sock: socket.socket, writable: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
