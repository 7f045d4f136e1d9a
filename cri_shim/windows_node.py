"""Wiring the daemon to the Windows runtime on a Windows node (the integrator calls these).

- `backend_configs(config)`: one WindowsBackendConfig per runtime handler
  (`runhcs-wcow-process`, `runhcs-wcow-hypervisor`), each with its own state
  directory and HCS Owner, so one handler's restart cleanup never touches the
  other's systems;
- `build_backends(config, log_sink)`: the backends on the real DLLs (Windows
  only; raises runtime.base.Unsupported elsewhere);
- `start_relay(config)`: the named pipe kubelet dials, relayed to the daemon's
  tcp://127.0.0.1:<windows.grpc_port> listener.
"""

from __future__ import annotations

import os
from dataclasses import replace

from cri_shim.config import Config
from cri_shim.windows_mapping import HANDLER_HYPERV, HANDLER_PROCESS
from cri_shim.windows_relay import Relay
from runtime.windows.backend import WindowsBackend, WindowsBackendConfig
from runtime.windows.ocimap import UtilityVmConfig
from runtime.windows.stdio import LogSinkFactory

HANDLERS = {HANDLER_PROCESS: "process", HANDLER_HYPERV: "hyperv"}


def backend_configs(config: Config) -> dict[str, WindowsBackendConfig]:
    w = config.windows
    base = WindowsBackendConfig(state_dir=w.state_dir, owner=w.owner,
                                uvm=UtilityVmConfig(w.uvm_processor_count, w.uvm_memory_mb),
                                operation_timeout_ms=int(w.operation_timeout * 1000))
    return {handler: replace(base, state_dir=os.path.join(w.state_dir, suffix), owner=f"{w.owner}.{suffix}",
                             hyperv=handler == HANDLER_HYPERV)
            for handler, suffix in HANDLERS.items()}


def build_backends(config: Config, log_sink: LogSinkFactory) -> list[WindowsBackend]:
    from runtime.windows.platform import windows_platform
    platform = windows_platform(log_sink, instance=config.windows.owner)
    return [WindowsBackend(handler, cfg, platform) for handler, cfg in backend_configs(config).items()]


def grpc_address(config: Config) -> str:
    """What the daemon's gRPC server listens on, on Windows."""
    return f"127.0.0.1:{config.windows.grpc_port}"


async def start_relay(config: Config) -> Relay | None:
    if not config.windows.pipe:
        return None
    relay = Relay("127.0.0.1", config.windows.grpc_port)
    await relay.serve_pipe(config.windows.pipe)
    return relay
