"""The pipe -> TCP relay, with real crictl and a real gRPC server on Linux.

On Linux the relay listens on a unix socket instead of a named pipe; the
splicing code is the same. Serving an actual `\\\\.\\pipe\\cri-shim` is
windows_only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc
from cri_shim.windows_relay import Relay
from tests.windows.conftest import run

CRICTL = "/usr/local/bin/crictl"
TMP = os.environ.get("CRI_SHIM_TEST_TMP", "/tmp/cri-shim-test")


class VersionOnly(pb_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    async def Version(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.VersionResponse(version="0.1.0", runtime_name="cri-shim-windows-relay-test",
                                  runtime_version="9", runtime_api_version="v1")


async def grpc_server() -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_RuntimeServiceServicer_to_server(VersionOnly(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
def sockdir() -> Any:
    os.makedirs(TMP, exist_ok=True)
    d = tempfile.mkdtemp(prefix="relay-", dir=TMP)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def crictl(endpoint: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        CRICTL, "--runtime-endpoint", endpoint, "--timeout", "5s", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def test_crictl_reaches_the_grpc_server_through_the_relay(sockdir: str) -> None:
    async def flow() -> None:
        server, port = await grpc_server()
        relay = Relay("127.0.0.1", port)
        sock = os.path.join(sockdir, "cri.sock")
        await relay.serve_unix(sock)
        try:
            results = await asyncio.gather(*(crictl(f"unix://{sock}", "version") for _ in range(4)))
            for code, out in results:
                assert code == 0, out
                assert "RuntimeName:  cri-shim-windows-relay-test" in out
            assert relay.accepted >= 4
        finally:
            await relay.close()
            await server.stop(None)

    run(flow())


def test_when_the_daemon_is_down_the_client_gets_a_prompt_error(sockdir: str) -> None:
    async def flow() -> None:
        server, port = await grpc_server()
        await server.stop(None)               # nothing listens on the port any more
        relay = Relay("127.0.0.1", port, connect_timeout=1)
        sock = os.path.join(sockdir, "cri.sock")
        await relay.serve_unix(sock)
        try:
            code, out = await crictl(f"unix://{sock}", "version")
            assert code != 0 and "cri-shim-windows-relay-test" not in out
            assert relay.active == set()
        finally:
            await relay.close()

    run(flow())


def test_close_drops_open_connections(sockdir: str) -> None:
    async def flow() -> None:
        server, port = await grpc_server()
        relay = Relay("127.0.0.1", port)
        sock = os.path.join(sockdir, "cri.sock")
        await relay.serve_unix(sock)
        reader, writer = await asyncio.open_unix_connection(sock)
        for _ in range(50):
            if relay.active:
                break
            await asyncio.sleep(0.02)
        assert len(relay.active) == 1
        await relay.close()
        # The client sees the end of the connection (after whatever the server had already sent).
        await asyncio.wait_for(reader.read(-1), 2)
        assert reader.at_eof()
        writer.close()
        await server.stop(None)

    run(flow())


@pytest.mark.windows_only
def test_the_relay_serves_the_named_pipe_kubelet_dials() -> None:
    async def flow() -> None:
        server, port = await grpc_server()
        relay = Relay("127.0.0.1", port)
        await relay.serve_pipe(r"\\.\pipe\cri-shim-test")
        code, out = await crictl("npipe:////./pipe/cri-shim-test", "version")
        assert code == 0 and "cri-shim-windows-relay-test" in out
        await relay.close()
        await server.stop(None)

    run(flow())
