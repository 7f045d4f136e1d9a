"""The only place that loads Windows DLLs: build the real WindowsPlatform on a Windows node.

Everything else in runtime.windows receives its native APIs injected, which is
what lets the whole package import and be tested on Linux. Call
`windows_platform()` from the daemon on Windows only; elsewhere it raises
Unsupported instead of failing on a missing DLL.
"""

from __future__ import annotations

import ctypes as C
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.base import Unsupported
from runtime.windows import _abi, hcs
from runtime.windows.backend import WindowsPlatform
from runtime.windows.jobobject import Kernel32Jobs
from runtime.windows.backup_files import Win32Files
from runtime.windows.layer_import import WclayerImporter
from runtime.windows.layer_mount import VmcomputeLayers
from runtime.windows.network import ComputeNetworkApi, NamespaceManager
from runtime.windows.stdio import FdIO, LogSinkFactory, Win32HandleIO

MIN_BUILD = 20348      # Windows Server 2022: HcsWaitForProcessExit / HcsWaitForComputeSystemExit exist


@dataclass(frozen=True)
class Dlls:
    computecore: Any
    computestorage: Any
    computenetwork: Any
    vmcompute: Any
    kernel32: Any
    ntdll: Any
    ole32: Any
    advapi32: Any


def _require_windows() -> None:
    if sys.platform != "win32":
        raise Unsupported("the Windows runtime needs Windows Server 2022 or later (this is "
                          f"{sys.platform}); on Linux use the linux runtime handlers")
    build = sys.getwindowsversion().build  # type: ignore[attr-defined,unused-ignore]
    if build < MIN_BUILD:
        raise Unsupported(f"Windows build {build} is too old: cri-shim needs Windows Server 2022 (build "
                          f"{MIN_BUILD}) for HcsWaitForProcessExit")


def load_dlls() -> Dlls:
    """Load and bind every DLL (raises AttributeError if this Windows build lacks an export)."""
    _require_windows()
    win_dll: Callable[..., Any] = getattr(C, "WinDLL")
    dlls = Dlls(computecore=win_dll("computecore.dll"), computestorage=win_dll("computestorage.dll"),
                computenetwork=win_dll("computenetwork.dll"),
                vmcompute=win_dll("vmcompute.dll"), kernel32=win_dll("kernel32.dll", use_last_error=True),
                ntdll=win_dll("ntdll.dll"), ole32=win_dll("ole32.dll"),
                advapi32=win_dll("advapi32.dll", use_last_error=True))
    for dll, table in ((dlls.computecore, _abi.COMPUTECORE), (dlls.computestorage, _abi.COMPUTESTORAGE),
                       (dlls.computenetwork, _abi.COMPUTENETWORK),
                       (dlls.vmcompute, _abi.VMCOMPUTE_LAYERS), (dlls.kernel32, _abi.KERNEL32),
                       (dlls.kernel32, _abi.KERNEL32_FILES), (dlls.advapi32, _abi.ADVAPI32_PRIVILEGES),
                       (dlls.ntdll, _abi.NTDLL), (dlls.ole32, _abi.OLE32)):
        hcs.bind(dll, table)
    return dlls


def windows_platform(log_sink: LogSinkFactory, instance: str = "cri-shim") -> WindowsPlatform:
    """The WindowsPlatform for WindowsBackend on this node."""
    dlls = load_dlls()
    # computecore strings are documented as LocalFree'd, HCN strings as CoTaskMemFree'd (unverified which
    # allocator each DLL really uses; hcsshim uses CoTaskMemFree everywhere).
    local_free = lambda address: dlls.kernel32.LocalFree(address)  # noqa: E731
    co_free = lambda address: dlls.ole32.CoTaskMemFree(address)  # noqa: E731
    return WindowsPlatform(
        hcs=hcs.ComputeCoreApi(dlls.computecore, local_free),
        layers=VmcomputeLayers(dlls.vmcompute),
        jobs=Kernel32Jobs(dlls.kernel32, dlls.ntdll),
        hcs_io=Win32HandleIO(),
        job_io=FdIO(),
        log_sink=log_sink,
        namespaces=NamespaceManager(ComputeNetworkApi(dlls.computenetwork, co_free), instance),
        resolve_path=os.path.realpath,
    )


def layer_importer(max_bytes: int = 0) -> WclayerImporter:
    """The image store's Windows layer importer on this node (BackupWrite + vmcompute ImportLayer)."""
    dlls = load_dlls()
    last_error: Callable[[], int] = getattr(C, "get_last_error")     # Windows-only in ctypes
    return WclayerImporter(Win32Files(dlls.kernel32, dlls.advapi32, last_error), VmcomputeLayers(dlls.vmcompute),
                           max_bytes)


def host_build() -> int:
    """The Windows build number (for image matching), or 0 elsewhere."""
    if sys.platform != "win32":
        return 0
    return int(importlib.import_module("sys").getwindowsversion().build)
