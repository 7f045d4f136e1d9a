"""The image store's unpacker for Windows images (chosen by `store.unpacker` when the node pulls windows/*).

Each layer goes through runtime.windows.layer_tar's parser (paths, PAX
MSWINDOWS records, alternate data streams, whiteouts) into a layer writer,
and the snapshot directory becomes that layer's folder: the path the Windows
backend receives in `rootfs.layers` (windows_mapping.container_spec).

On a Windows node: `runtime.windows.layer_import.WclayerImporter` (BackupWrite
+ vmcompute ImportLayer / ProcessBaseImage), given the parent layer folders,
so the unpacker is a `pull.LayeredUnpacker` and the puller imports the layers
bottom-up. The DLLs are loaded on the first import, not when the store is
built. Under the test-only fake node on Linux: the portable `FolderWriter`
(a plain unpacker; layers are independent there).
"""

from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from cri_shim.images.pull import LayeredUnpacker, Unpacker
from runtime.windows.layer_folder import write_layer_folder
from runtime.windows.layer_import import LayerImporter


def unpacker(max_layer_bytes: int, windows_host: bool = sys.platform == "win32",
             importer: LayerImporter | None = None) -> Unpacker | LayeredUnpacker:
    """`importer` replaces the node's own (tests bind a `WclayerImporter` to the fake DLLs)."""
    if windows_host or importer is not None:
        return LayeredUnpacker(NodeImport(max_layer_bytes, importer).unpack)
    return functools.partial(write_layer_folder, max_bytes=max_layer_bytes)


class NodeImport:
    """Imports layers with the node's importer, built (DLLs loaded) on first use."""

    def __init__(self, max_layer_bytes: int, importer: LayerImporter | None = None) -> None:
        self._max_bytes = max_layer_bytes
        self._importer = importer
        self._lock = threading.Lock()

    def _get(self) -> LayerImporter:
        with self._lock:
            if self._importer is None:
                from runtime.windows.platform import layer_importer
                self._importer = layer_importer(self._max_bytes)
            return self._importer

    def unpack(self, source: BinaryIO, target: Path, parents: tuple[Path, ...]) -> int:
        return self._get().import_layer(source, target, parents)
