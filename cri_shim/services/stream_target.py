"""What the streaming server drives in the daemon: exec and attach through the container's backend,
port-forward as a TCP connection made from inside the pod's network namespace."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cri_shim.errors import FailedPrecondition, Unimplemented
from cri_shim.services import windows_pods
from cri_shim.services.backend_errors import mapped
from cri_shim.services.container_execsync import running
from cri_shim.services.runtime_state import RuntimeState
from runtime.base import ExecSpec, IOSession

CONNECT_TIMEOUT = 10.0


class LifecycleStreamTarget:
    """cri_shim.streaming.StreamTarget over the daemon's runtime state."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def open_exec(self, container_id: str, spec: ExecSpec, size: tuple[int, int] | None) -> IOSession:
        c = running(self._state, container_id, "exec")
        backend = self._state.backend_of_container(c)
        with mapped(f"exec in container {c.id}"):
            session = await backend.exec(c.id, spec)
            if spec.tty and size is not None:
                await session.resize(*size)
        return session

    async def open_attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool) -> IOSession:
        c = running(self._state, container_id, "attach")
        backend = self._state.backend_of_container(c)
        with mapped(f"attach to container {c.id}"):
            return await backend.attach(c.id, stdin, stdout, stderr)

    async def open_port(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sb = self._state.sandbox(sandbox_id)
        if windows_pods.is_windows(sb):
            raise Unimplemented(f"port-forward into Windows pod {sb.id} is not supported yet")
        if sb.netns_path is None:   # host network: the pod's localhost is the host's
            return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT)
        from runtime.linux import netns   # Linux only: not imported on a Windows node
        path = Path(sb.netns_path)
        if not path.exists():
            raise FailedPrecondition(f"pod sandbox {sb.id} has no network namespace any more (it was stopped)")
        return await netns.open_port_in_netns(path, port, timeout=CONNECT_TIMEOUT)
