"""Named pipe -> TCP relay: the CRI endpoint kubelet dials on Windows.

kubelet's Windows CRI client accepts only `npipe://` and `tcp://` endpoints,
and grpcio cannot serve a named pipe. The daemon therefore serves gRPC on
`tcp://127.0.0.1:<port>` and this relay accepts `\\\\.\\pipe\\cri-shim`
connections and splices each one to that port, byte for byte (HTTP/2 passes
through untouched). kubelet then uses `npipe://./pipe/cri-shim`, as with
containerd.

The relay logic is transport-neutral (asyncio streams); `serve_unix` exists so
the Linux tests drive it with real crictl and a real gRPC server. `serve_pipe`
uses the Windows proactor's named-pipe server and is verified only on Windows.
Security: the pipe gets Windows' default named-pipe DACL (full control for
SYSTEM, Administrators and the owner); the TCP port behind it is reachable by
any local user, as containerd's tcp:// endpoint would be (README).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DEFAULT_PIPE = r"\\.\pipe\cri-shim"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close so the other side sees the end of this direction."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


@dataclass
class Relay:
    """Splices every accepted connection to `target_host:target_port`."""

    target_host: str
    target_port: int
    connect_timeout: float = 5.0
    active: set[asyncio.Task[None]] = field(default_factory=set)
    servers: list[Any] = field(default_factory=list)
    accepted: int = 0

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        try:
            try:
                target_r, target_w = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as e:
                log.warning("CRI relay: cannot reach %s:%d: %s", self.target_host, self.target_port, e)
                return
            try:
                await asyncio.gather(_pump(client_r, target_w), _pump(target_r, client_w))
            finally:
                target_w.close()
        finally:
            client_w.close()
            if task is not None:
                self.active.discard(task)

    async def serve_unix(self, path: str) -> None:
        """Accept on a unix socket (the Linux test transport, and unix-socket clients)."""
        server = await asyncio.start_unix_server(self._handle, path=path)
        self.servers.append(server)

    async def serve_pipe(self, pipe: str = DEFAULT_PIPE) -> None:
        """Accept on a Windows named pipe (ProactorEventLoop only; Windows only)."""
        loop = asyncio.get_running_loop()
        start: Callable[..., Any] | None = getattr(loop, "start_serving_pipe", None)
        if start is None:
            raise RuntimeError("named pipes need the Windows proactor event loop")

        def protocol() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader()
            return asyncio.StreamReaderProtocol(reader, self._handle)

        self.servers.extend(await start(protocol, pipe))

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.active):
            task.cancel()
        await asyncio.gather(*self.active, return_exceptions=True)
        self.servers.clear()
