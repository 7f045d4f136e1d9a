"""The Windows suite runs on Linux against fakes of the Windows native APIs.

The real Host Compute Service, HCN, wcifs layers and job objects exist only on
Windows; these fixtures wire `WindowsBackend` to `runtime.windows.testing`'s
fakes through the same ctypes bindings used on Windows (the fake computecore is
a CFUNCTYPE "DLL"). What only a real Windows node can confirm is marked
`windows_only` and skipped here; the README lists it as not verified.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runtime import oci
from runtime.base import ContainerSpec, RootfsSpec, SandboxSpec, StdioSpec, WindowsSandboxSpec
from runtime.logs import CriLogWriter
from runtime.windows import _abi, hcs
from runtime.windows.backend import WindowsBackend, WindowsBackendConfig, WindowsPlatform
from runtime.windows.network import NamespaceManager
from runtime.windows.stdio import FdIO
from runtime.windows.testing.fake_dll import FakeDll
from runtime.windows.testing.fake_hcs import FakeHcs
from runtime.windows.testing.fakes import FakeHcn, FakeJobs, FakeLayers
from tests.harness.registry import LocalRegistry, start_registry
from runtime.windows.testing.schemas import ClosedWorld, OciWindowsSchema

SCHEMAS = Path(__file__).parent / "schemas"
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if sys.platform == "win32":
        return
    skip = pytest.mark.skip(reason="needs a real Windows Server node (listed in README: not verified on Windows yet)")
    for item in items:
        if "windows_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    """A local OCI registry on loopback for the Windows image tests (one per test module)."""
    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def hcs_21h2() -> ClosedWorld:
    return ClosedWorld(SCHEMAS / "hcs" / "hcs-schema-21H2.json")


@pytest.fixture(scope="session")
def hcs_1809() -> ClosedWorld:
    return ClosedWorld(SCHEMAS / "hcs" / "hcs-schema-1809.json")


@pytest.fixture(scope="session")
def oci_windows() -> OciWindowsSchema:
    return OciWindowsSchema(SCHEMAS / "oci")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


NAMESPACE = "3a8c1f2e-7d6b-4c5a-9e8f-0a1b2c3d4e5f"


@dataclass
class World:
    """Fake HCS + layers + jobs + HCN, the real ctypes binding and a backend factory."""

    root: Path
    fake: FakeHcs
    layers: FakeLayers
    jobs: FakeJobs
    hcn: FakeHcn
    api: hcs.ComputeCoreApi
    backends: list[WindowsBackend] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)

    def backend(self, *, hyperv: bool = False, name: str = "runhcs-wcow-process",
                **cfg: Any) -> WindowsBackend:
        config = WindowsBackendConfig(state_dir=str(self.root / "state"), hyperv=hyperv, host_processors=4,
                                      exit_poll_ms=100, **cfg)
        platform = WindowsPlatform(hcs=self.api, layers=self.layers, jobs=self.jobs, hcs_io=FdIO(),
                                   job_io=FdIO(), log_sink=lambda path: CriLogWriter(path),
                                   namespaces=NamespaceManager(self.hcn, "test"))
        b = WindowsBackend(name, config, platform)
        b.subscribe(self.events.append)
        self.backends.append(b)
        return b

    async def running(self, spec: ContainerSpec) -> WindowsBackend:
        """A new backend with the default pod and `spec` created and started in it."""
        b = self.backend()
        await b.create_sandbox(self.pod())
        await b.create_container(spec)
        await b.start_container(spec.id)
        return b

    def base_layer(self, name: str = "base", *, uvm: bool = True) -> str:
        d = self.root / "layers" / name
        (d / "Files").mkdir(parents=True, exist_ok=True)
        (d / "blank.vhdx").write_bytes(b"vhdx-template")
        if uvm:
            (d / "UtilityVM" / "Files").mkdir(parents=True, exist_ok=True)
            (d / "UtilityVM" / "SystemTemplate.vhdx").write_bytes(b"uvm-template")
        return str(d)

    def layer(self, name: str) -> str:
        d = self.root / "layers" / name
        (d / "Files").mkdir(parents=True, exist_ok=True)
        return str(d)

    def pod(self, sid: str = "p" * 64, *, host_process: bool = False, namespace: str | None = NAMESPACE,
            hyperv: bool = False) -> SandboxSpec:
        if namespace and not host_process and namespace not in self.hcn.namespaces:
            self.hcn.namespaces[namespace] = []
        return SandboxSpec(id=sid, name="default/web", hostname="web-0", sandbox_dir=str(self.root / "pods" / sid),
                           log_directory=str(self.root / "logs" / sid),
                           windows=WindowsSandboxSpec(host_process=host_process,
                                                      network_namespace=None if host_process else namespace,
                                                      hyperv=hyperv))

    def container(self, cid: str, sandbox_id: str = "p" * 64, *, args: tuple[str, ...] = ("cmd", "/c", "echo hi"),
                  layers: tuple[str, ...] | None = None, stdin: bool = False, tty: bool = False,
                  windows: dict[str, Any] | None = None, host_process: bool = False,
                  mounts: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> ContainerSpec:
        bundle = self.root / "bundles" / cid
        win = {"network": {"networkNamespace": NAMESPACE}} if not host_process else {}
        win.update(windows or {})
        spec: dict[str, Any] = {
            "ociVersion": "1.1.0",
            "process": {"args": list(args), "cwd": "C:\\", "env": ["PATH=C:\\Windows\\System32"],
                        "terminal": tty, "user": {"username": "ContainerUser" if not host_process else ""}},
            "hostname": "web-0",
            "mounts": mounts or [],
            "annotations": {"microsoft.com/hostprocess-container": "true" if host_process else "false"},
            "windows": win,
        }
        spec.update(extra or {})
        oci.write(bundle, spec)
        log_path = str(self.root / "logs" / sandbox_id / f"{cid}.log")
        return ContainerSpec(id=cid, sandbox_id=sandbox_id, bundle_dir=str(bundle),
                             rootfs=RootfsSpec(layers or (self.base_layer(),), str(self.root / "snap" / cid)),
                             stdio=StdioSpec(log_path=log_path, stdin=stdin, tty=tty))

    def problems(self) -> list[str]:
        out = self.fake.problems()
        if self.layers.mounted:
            out.append(f"layers still mounted: {sorted(self.layers.mounted)}")
        if self.jobs.open_handles():
            out.append(f"job handles still open: {self.jobs.open_handles()}")
        return out


@pytest.fixture
def world(tmp_path: Path, hcs_21h2: ClosedWorld) -> Iterator[World]:
    layers = FakeLayers()
    hcn = FakeHcn()
    fake = FakeHcs(hcs_21h2.errors, volume_mounted=layers.is_mounted,
                   namespace_exists=lambda ns: ns in hcn.namespaces)
    dll = FakeDll(fake, _abi.COMPUTECORE)
    hcs.bind(dll, _abi.COMPUTECORE)
    w = World(tmp_path, fake, layers, FakeJobs(), hcn, hcs.ComputeCoreApi(dll, fake.alloc.free))
    open_fds = set(os.listdir("/proc/self/fd"))
    yield w
    for b in w.backends:
        run(b.close())
    fake.shutdown()
    del open_fds
