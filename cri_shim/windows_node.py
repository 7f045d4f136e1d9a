"""Wiring the daemon to the Windows runtime on a Windows node (the integrator calls these).

- `backend_configs(config)`: one WindowsBackendConfig per runtime handler
  (`runhcs-wcow-process`, `runhcs-wcow-hypervisor`), each with its own state
  directory and HCS Owner, so one handler's restart cleanup never touches the
  other's systems;
- `build_backends(config, log_sink)`: the backends on the real DLLs (Windows
  only; raises runtime.base.Unsupported elsewhere);
- `build_node(config, log_sink)`: the daemon's entry point: the backends plus
  the HCN namespace manager the pod services use, on the real DLLs, or (the
  test-only `windows.test_fake_hcs` switch, Linux) on the fakes of
  runtime/windows/testing;
- `start_relay(config)`: the named pipe kubelet dials, relayed to the daemon's
  tcp://127.0.0.1:<windows.grpc_port> listener.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cri_shim.config import Config
from cri_shim.errors import StartupError
from cri_shim.windows_mapping import HANDLER_HYPERV, HANDLER_PROCESS
from cri_shim.windows_relay import Relay
from runtime.windows.backend import WindowsBackend, WindowsBackendConfig, WindowsPlatform
from runtime.windows.network import NamespaceManager
from runtime.windows.ocimap import UtilityVmConfig
from runtime.windows.stdio import LogSinkFactory

HANDLERS = {HANDLER_PROCESS: "process", HANDLER_HYPERV: "hyperv"}


def backend_configs(config: Config, state_dir: str | None = None) -> dict[str, WindowsBackendConfig]:
    w = config.windows
    state_dir = state_dir or w.state_dir
    base = WindowsBackendConfig(state_dir=state_dir, owner=w.owner,
                                uvm=UtilityVmConfig(w.uvm_processor_count, w.uvm_memory_mb),
                                operation_timeout_ms=int(w.operation_timeout * 1000))
    return {handler: replace(base, state_dir=os.path.join(state_dir, suffix), owner=f"{w.owner}.{suffix}",
                             hyperv=handler == HANDLER_HYPERV)
            for handler, suffix in HANDLERS.items()}


def build_backends(config: Config, log_sink: LogSinkFactory) -> list[WindowsBackend]:
    from runtime.windows.platform import windows_platform
    platform = windows_platform(log_sink, instance=config.windows.owner)
    return [WindowsBackend(handler, cfg, platform) for handler, cfg in backend_configs(config).items()]


@dataclass
class WindowsNode:
    """What the daemon wires in on a Windows node: one backend per handler and the pods' HCN namespaces."""

    backends: list[WindowsBackend]
    namespaces: NamespaceManager | None
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def handlers(self) -> dict[str, WindowsBackend]:
        return {b.name: b for b in self.backends}

    def close(self) -> None:
        """After the backends closed (daemon shutdown)."""
        for fn in self.on_close:
            fn()


def _node(config: Config, platform: WindowsPlatform, state_dir: str | None = None) -> WindowsNode:
    backends = [WindowsBackend(handler, cfg, platform)
                for handler, cfg in backend_configs(config, state_dir).items()]
    if platform.namespaces is not None:
        # Which HCN namespaces this daemon made, for the restart cleanup (NamespaceManager.gc).
        platform.namespaces.attach_ledger(Path(state_dir or config.windows.state_dir) / "hcn-namespaces")
    return WindowsNode(backends, platform.namespaces)


def build_node(config: Config, log_sink: LogSinkFactory) -> WindowsNode:
    """The Windows handlers of this daemon: on the fake node when `windows.test_fake_hcs` is set, else real."""
    if config.windows.test_fake_hcs:
        return build_fake_node(config, log_sink)
    from runtime.windows.platform import windows_platform
    return _node(config, windows_platform(log_sink, instance=config.windows.owner))


def fake_hcs_schema() -> Path:
    """The official HCS schema the fake validates documents against (in the source checkout's tests)."""
    return Path(__file__).resolve().parents[1] / "tests" / "windows" / "schemas" / "hcs" / "hcs-schema-21H2.json"


def build_fake_node(config: Config, log_sink: LogSinkFactory) -> WindowsNode:
    """TEST ONLY: the Windows handlers on runtime/windows/testing's fakes, inside this (Linux) daemon."""
    from runtime.windows.testing.node import FakeNode
    schema = fake_hcs_schema()
    if not schema.is_file():
        raise StartupError(f"windows.test_fake_hcs needs a source checkout: {schema} is missing")
    fake = FakeNode(schema, Path(config.windows.test_fake_hcs))
    node = _node(config, fake.platform(log_sink, config.windows.owner), str(config.state_dir / "windows"))
    node.on_close.append(fake.close)
    return node


def grpc_address(config: Config) -> str:
    """What the daemon's gRPC server listens on, on Windows."""
    return f"127.0.0.1:{config.windows.grpc_port}"


async def start_relay(config: Config, port: int = 0) -> Relay | None:
    """The pipe relay to `port` (default windows.grpc_port); None when windows.pipe is ""."""
    if not config.windows.pipe:
        return None
    relay = Relay("127.0.0.1", port or config.windows.grpc_port)
    await relay.serve_pipe(config.windows.pipe)
    return relay
