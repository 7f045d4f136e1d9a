"""Mounting Windows container layers (WCIFS) and creating the writable scratch.

A container's root is its scratch directory (holding `sandbox.vhdx`) stacked
over read-only parent layer folders. The vmcompute.dll sequence containerd and
hcsshim use in production:

    ActivateLayer(info, scratch)                      attach sandbox.vhdx
    PrepareLayer(info, scratch, parents[], n)         wcifs filter over the parents
    GetLayerMountPath(info, scratch, &len, buf)       "\\\\?\\Volume{GUID}\\" -> Storage.Path
    ... container lifetime ...
    UnprepareLayer(info, scratch); DeactivateLayer(info, scratch)

These exports are undocumented (checked by hand against hcsshim's `//sys`
lines, see _abi.VMCOMPUTE_LAYERS); `LayerMounter` hides them so the backend and
its tests depend on the interface only. Scratch creation is plain file work
(copy the base layer's `blank.vhdx`), tested on Linux.
"""

from __future__ import annotations

import ctypes as C
import logging
import ntpath
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any, Protocol

from runtime.base import InvalidSpec, RuntimeFailure
from runtime.windows import _abi
from runtime.windows._marshal import guid_in, guid_out, wstr

log = logging.getLogger(__name__)

SCRATCH_NAME = "sandbox.vhdx"
BLANK_NAME = "blank.vhdx"
UVM_TEMPLATE = os.path.join("UtilityVM", "SystemTemplate.vhdx")
ERROR_NOT_READY = 0x80070015
ERROR_DEVICE_NOT_CONNECTED = 0x8007048F
RETRYABLE = frozenset({ERROR_NOT_READY, ERROR_DEVICE_NOT_CONNECTED})
ATTEMPTS = 5


class LayerError(RuntimeFailure):
    def __init__(self, call: str, hr: int, path: str) -> None:
        self.call, self.hr, self.path = call, _abi.unsigned(hr), path
        super().__init__(f"{call}({path}) failed with {_abi.hresult_name(hr)}")


class LayerMounter(Protocol):
    def layer_id(self, layer_path: str) -> str:
        """The layer's GUID as HCS expects it in `Layer.Id` (NameToGuid of the folder name)."""
        ...

    def mount(self, scratch_dir: str, parents: Sequence[str]) -> str:
        """Stack `scratch_dir` over `parents` (immediate parent first); the volume path."""
        ...

    def unmount(self, scratch_dir: str) -> None:
        """Undo `mount`; a scratch that is not mounted is fine."""
        ...

    def expand_scratch(self, scratch_dir: str, size_bytes: int) -> None: ...


def create_scratch(scratch_dir: str, base_layer: str) -> str:
    """`<scratch>/sandbox.vhdx` as a copy of the base layer's blank.vhdx (what containerd's snapshotter does)."""
    target = os.path.join(scratch_dir, SCRATCH_NAME)
    if os.path.exists(target):
        return target
    template = os.path.join(base_layer, BLANK_NAME)
    if not os.path.isfile(template):
        raise InvalidSpec("rootfs.layers", f"base layer {base_layer} has no {BLANK_NAME}: not a Windows base layer")
    os.makedirs(scratch_dir, exist_ok=True)
    tmp = target + ".tmp"
    try:
        shutil.copyfile(template, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def create_uvm_scratch(target: str, base_layer: str) -> str:
    """A utility VM's scratch: a copy of `<base>/UtilityVM/SystemTemplate.vhdx`."""
    template = os.path.join(base_layer, UVM_TEMPLATE)
    if not os.path.isfile(template):
        raise InvalidSpec("rootfs.layers", f"base layer {base_layer} has no {UVM_TEMPLATE}: it cannot boot a "
                                           "utility VM (Hyper-V isolation needs a base layer with UtilityVM)")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        shutil.copyfile(template, target + ".tmp")
        os.replace(target + ".tmp", target)
    return target


def folder_name(path: str) -> str:
    """The last component of a Windows or POSIX path (NameToGuid hashes the layer folder's name)."""
    return ntpath.basename(path.rstrip("\\/"))


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) below `path`, for the writable-layer stats."""
    total, count = 0, 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
                count += 1
            except OSError:
                pass
    return total, count


class VmcomputeLayers:
    """`LayerMounter` over vmcompute.dll (bound with `_abi.VMCOMPUTE_LAYERS`). Windows only."""

    def __init__(self, dll: Any, sleep: Any = time.sleep) -> None:
        self._dll = dll
        self._sleep = sleep
        self._home = wstr("")
        self._info = _abi.DriverInfo(1, C.cast(self._home, C.c_void_p).value)

    def _call(self, name: str, path: str, *args: Any) -> None:
        fn = getattr(self._dll, name)
        p = wstr(path)
        for attempt in range(ATTEMPTS):
            hr = _abi.unsigned(fn(C.byref(self._info), p, *args))
            if hr == 0:
                return
            if hr not in RETRYABLE or attempt == ATTEMPTS - 1:
                raise LayerError(name, hr, path)
            self._sleep(0.1 * (attempt + 1))   # RS5 races with the volume arrival (hcsshim retries too)

    def layer_id(self, layer_path: str) -> str:
        g = _abi.GUID()
        name = wstr(folder_name(layer_path))
        hr = _abi.unsigned(self._dll.NameToGuid(name, C.byref(g)))
        if hr:
            raise LayerError("NameToGuid", hr, layer_path)
        return str(guid_out(g))

    def _descriptors(self, parents: Sequence[str]) -> tuple[Any, list[Any]]:
        """WC_LAYER_DESCRIPTORs of `parents` (in the given order) and the path buffers they point into."""
        paths = [wstr(p) for p in parents]
        descriptors = (_abi.WC_LAYER_DESCRIPTOR * max(1, len(parents)))()
        for d, path, buf in zip(descriptors, parents, paths):
            d.LayerId = guid_in(self.layer_id(path))
            d.Flags = 0
            d.Path = C.cast(buf, C.c_void_p).value
        return descriptors, paths

    def mount(self, scratch_dir: str, parents: Sequence[str]) -> str:
        self._call("ActivateLayer", scratch_dir)
        try:
            descriptors, _paths = self._descriptors(parents)
            self._call("PrepareLayer", scratch_dir, descriptors, len(parents))
            try:
                return self._mount_path(scratch_dir)
            except BaseException:
                self._call("UnprepareLayer", scratch_dir)
                raise
        except BaseException:
            self._call("DeactivateLayer", scratch_dir)
            raise

    def _mount_path(self, scratch_dir: str) -> str:
        length = _abi.UINT64(0)
        self._call("GetLayerMountPath", scratch_dir, C.byref(length), None)
        buf = C.create_string_buffer(2 * (int(length.value) + 1))
        self._call("GetLayerMountPath", scratch_dir, C.byref(length), buf)
        path = buf.raw.decode("utf-16-le").split("\0", 1)[0]
        if not path:
            raise LayerError("GetLayerMountPath", 0x80004005, scratch_dir)
        return path if path.endswith("\\") else path + "\\"

    def unmount(self, scratch_dir: str) -> None:
        for call in ("UnprepareLayer", "DeactivateLayer"):
            try:
                self._call(call, scratch_dir)
            except LayerError as e:
                if e.hr not in _abi.ALREADY_GONE:
                    raise

    def expand_scratch(self, scratch_dir: str, size_bytes: int) -> None:
        self._call("ExpandSandboxSize", scratch_dir, size_bytes)

    # ---------------------------------------------------------------- import (runtime/windows/layer_import.py)

    def import_layer(self, layer_dir: str, staging_dir: str, parents: Sequence[str]) -> None:
        """vmcompute ImportLayer: the transport folder `staging_dir` into `layer_dir` over `parents` (immediate
        parent first, base last)."""
        descriptors, _paths = self._descriptors(parents)
        staging = wstr(staging_dir)
        self._call("ImportLayer", layer_dir, staging, descriptors, len(parents))

    def process_base_image(self, layer_dir: str) -> None:
        """vmcompute ProcessBaseImage: blank.vhdx / blank-base.vhdx and the hives of a written base layer."""
        self._plain_call("ProcessBaseImage", layer_dir)

    def process_utility_image(self, uvm_dir: str) -> None:
        """vmcompute ProcessUtilityImage on `<layer>\\UtilityVM`: SystemTemplate.vhdx, the BCD."""
        self._plain_call("ProcessUtilityImage", uvm_dir)

    def _plain_call(self, name: str, path: str) -> None:
        hr = _abi.unsigned(getattr(self._dll, name)(wstr(path)))
        if hr:
            raise LayerError(name, hr, path)
