"""Run a StreamingServer (the code under test) on its own event-loop thread, plus the Go client that drives it.

The Go client (tests/streaming_client) uses the same client-go executors and
dialers as crictl v1.37.0, so the bytes on the wire are crictl's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cri_shim.config import StreamingConfig
from cri_shim.streaming import StreamingServer
from tests.harness.stream_target import HostProcessTarget

REPO = Path(__file__).resolve().parents[2]
CLIENT_SRC = REPO / "tests" / "streaming_client"
CLIENT_BIN = REPO / "bin" / "streaming-client"

T = TypeVar("T")


def build_client() -> Path:
    """Build bin/streaming-client if it is missing or older than its source (go module proxy/cache)."""
    newest = max(p.stat().st_mtime for p in CLIENT_SRC.iterdir())
    if not CLIENT_BIN.exists() or CLIENT_BIN.stat().st_mtime < newest:
        env = dict(os.environ, CGO_ENABLED="0", PATH=f"/usr/local/go/bin:{os.environ.get('PATH', '')}")
        subprocess.run(["go", "build", "-o", str(CLIENT_BIN), "."], cwd=CLIENT_SRC, env=env, check=True,
                       timeout=600)
    return CLIENT_BIN


class ServerThread:
    """A StreamingServer with a HostProcessTarget, served on a private event loop in a thread."""

    def __init__(self, config: StreamingConfig | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="streaming-test-loop", daemon=True)
        self._thread.start()
        self.target = HostProcessTarget()
        self.server = StreamingServer(config or StreamingConfig(), self.target)
        self.run(self.server.start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def wrapper() -> T:
            return fn(*args, **kwargs)
        return self.run(wrapper())

    def stop(self) -> None:
        self.run(self.server.stop())
        self.run(self.target.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def client(args: list[str], stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(CLIENT_BIN), *args], input=stdin if stdin is not None else b"",
                          capture_output=True, timeout=timeout)
