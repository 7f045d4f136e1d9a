"""The image store's unpacker for Windows images (chosen by `store.unpacker` when the node pulls windows/*).

Each layer goes through runtime.windows.layer_tar's parser (paths, PAX
MSWINDOWS records, alternate data streams, whiteouts) into a layer writer,
and the snapshot directory becomes that layer's folder: the path the Windows
backend receives in `rootfs.layers` (windows_mapping.container_spec).

Where it writes: with the portable `FolderWriter` under the test-only fake
node on Linux. On a Windows node the import itself (BackupWrite +
HcsImportLayer / HcsSetupBaseOSLayer) is not bound yet, so a pull there fails
with a clear error instead of leaving folders HCS cannot mount.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import BinaryIO

from cri_shim.images.pull import Unpacker
from runtime.base import Unsupported
from runtime.windows.layer_folder import write_layer_folder


def unpacker(max_layer_bytes: int, windows_host: bool = sys.platform == "win32") -> Unpacker:
    if windows_host:
        return _not_on_a_windows_node
    return functools.partial(write_layer_folder, max_bytes=max_layer_bytes)


def _not_on_a_windows_node(source: BinaryIO, target: Path) -> int:
    raise Unsupported("importing Windows image layers on a Windows node (BackupWrite + HcsImportLayer) is not "
                      "implemented yet; this build imports Windows layers only under windows.test_fake_hcs")
