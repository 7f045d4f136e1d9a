"""The same CRI flows against the real Host Compute Service: only on a Windows Server 2022+ node.

Everything here is `windows_only` (skipped on Linux, listed in the README as not verified on Windows
yet). Run on a self-hosted Windows runner as SYSTEM or an administrator with:

    set CRI_SHIM_WINDOWS_LAYERS=C:\\layers\\servercore-base;C:\\layers\\nanoserver-app   (base layer first)
    python -m pytest tests/windows/test_real_node.py

The layers must be unpacked Windows layer folders of an image whose OS build matches the host (process
isolation) and whose base layer has UtilityVM\\ (Hyper-V).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import pytest

from runtime import oci
from runtime.base import (ContainerSpec, ContainerState, ExecSpec, RootfsSpec, SandboxSpec, StdioSpec,
                          WindowsSandboxSpec)

pytestmark = pytest.mark.windows_only


def layers() -> tuple[str, ...]:
    value = os.environ.get("CRI_SHIM_WINDOWS_LAYERS", "")
    if not value:
        pytest.fail("set CRI_SHIM_WINDOWS_LAYERS to the image's layer folders, base layer first")
    return tuple(value.split(";"))


def real_backend(root: Path, hyperv: bool) -> object:
    from runtime.logs import CriLogWriter
    from runtime.windows.backend import WindowsBackend, WindowsBackendConfig
    from runtime.windows.platform import windows_platform
    platform = windows_platform(lambda path: CriLogWriter(path), instance="cri-shim-test")
    return WindowsBackend("runhcs-wcow-hypervisor" if hyperv else "runhcs-wcow-process",
                          WindowsBackendConfig(state_dir=str(root / "state"), owner="cri-shim-test", hyperv=hyperv),
                          platform)


@pytest.mark.parametrize("hyperv, host_process", [(False, False), (True, False), (False, True)],
                         ids=["process-isolation", "hyper-v", "hostprocess"])
def test_cri_flow_on_real_hcs(hyperv: bool, host_process: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="cri-shim-win-"))
    backend = real_backend(root, hyperv)
    namespaces = backend._p.namespaces  # type: ignore[attr-defined]
    pod_id = uuid.uuid4().hex * 2
    ns = None if host_process else namespaces.ensure(pod_id)
    bundle = root / "bundle"
    oci.write(bundle, {"ociVersion": "1.1.0", "hostname": "win-test",
                       "process": {"args": ["cmd", "/c", "echo hello & ping -t 127.0.0.1 > NUL"], "cwd": "C:\\",
                                   "user": {"username": "" if host_process else "ContainerUser"}},
                       "annotations": {"microsoft.com/hostprocess-container": str(host_process).lower()},
                       "windows": {"resources": {"memory": {"limit": 256 << 20}},
                                   **({"network": {"networkNamespace": ns}} if ns else {})}})
    cid = uuid.uuid4().hex * 2
    log_path = root / "c.log"

    async def flow() -> None:
        await backend.create_sandbox(SandboxSpec(  # type: ignore[attr-defined]
            id=pod_id, name="test/win", hostname="win-test", sandbox_dir=str(root / "pod"),
            log_directory=str(root), windows=WindowsSandboxSpec(host_process=host_process, network_namespace=ns,
                                                                hyperv=hyperv)))
        await backend.create_container(ContainerSpec(  # type: ignore[attr-defined]
            id=cid, sandbox_id=pod_id, bundle_dir=str(bundle), rootfs=RootfsSpec(layers(), str(root / "scratch")),
            stdio=StdioSpec(log_path=str(log_path))))
        await backend.start_container(cid)  # type: ignore[attr-defined]
        r = await backend.exec_sync(cid, ExecSpec(("cmd", "/c", "echo exec")), 30, 1 << 16)  # type: ignore
        assert r.exit_code == 0 and b"exec" in r.stdout
        stats = await backend.container_stats(cid)  # type: ignore[attr-defined]
        assert stats.cpu_usage_ns is not None
        stopped = await backend.stop_container(cid, 10)  # type: ignore[attr-defined]
        assert stopped.state is ContainerState.EXITED
        await backend.remove_sandbox(pod_id)  # type: ignore[attr-defined]
        await backend.close()  # type: ignore[attr-defined]

    asyncio.run(flow())
    if ns:
        namespaces.delete(ns)
    assert "stdout F hello" in log_path.read_text()
