"""A Windows layer tar -> a layer folder, through `layer_tar.parse` and a `LayerWriter`.

`FolderWriter` is the portable writer: it lays the parsed operations out as
the staging ("transport") folder an importer consumes, with plain file I/O, so
the image store can import Windows layers under the test-only fake node on
Linux and the result can be inspected:

    Files\\..., Hives\\..., UtilityVM\\Files\\...   directories as directories (their own backup
                                                stream - security, EAs - is counted, not kept:
                                                a plain folder has nowhere to put it); each file holds
                                                the Win32 backup stream the parser produced
                                                (security, EAs, reparse data or data, then ADS),
                                                exactly the bytes BackupWrite would be given
    tombstones.txt                              the deletions (whiteouts): UTF-8 BOM,
                                                "Version 1.0", then one "\\path" a line

On a Windows node the writer must instead apply each stream with BackupWrite
and hand the folder to HcsImportLayer (non-base layers, with the parent
layers) or HcsSetupBaseOSLayer (base layers, which creates blank.vhdx). Those
steps are not bound yet (see README, "not verified on Windows yet").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, BinaryIO

from runtime.base import RuntimeFailure
from runtime.windows.layer_tar import FILE_ATTRIBUTE_DIRECTORY, FileInfo, LayerFormatError, parse

TOMBSTONES = "tombstones.txt"
TOMBSTONES_HEADER = "\ufeffVersion 1.0\n"


class FolderWriter:
    """A `layer_tar.LayerWriter` writing the staging layout above under `root` (an empty directory)."""

    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes          # 0: no limit
        self.written = 0
        self.removed: list[str] = []
        self._current: IO[bytes] | None = None
        self._current_path = ""

    def _local(self, path: str) -> Path:
        # layer_tar.windows_path already refused "..", empty parts and absolute paths; this never writes
        # through a link either, because the writer creates none (reparse points are stream data).
        return self.root.joinpath(*path.split("\\"))

    def add(self, path: str, info: FileInfo, sddl: str) -> None:
        self._close_current()
        local = self._local(path)
        self._parent(path, local)
        directory = bool(info.attributes & FILE_ATTRIBUTE_DIRECTORY)
        if local.is_dir() != directory and local.exists():
            raise LayerFormatError(path, "a file and a directory at the same path in one layer")
        if directory:
            local.mkdir(exist_ok=True)
            self._current_path = path
            return
        local.unlink(missing_ok=True)   # a later entry for the same path replaces the earlier one, as in tar
        self._current = open(local, "xb")
        self._current_path = path

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.max_bytes and self.written > self.max_bytes:
            raise LayerFormatError(self._current_path, f"the layer is larger than images.max_layer_bytes "
                                                       f"({self.max_bytes} bytes)")
        if self._current is not None:   # else a directory's security/EA stream (see the module docstring)
            self._current.write(data)

    def add_link(self, path: str, target: str) -> None:
        self._close_current()
        source = self._local(target)
        if not source.is_file():
            raise LayerFormatError(path, f"hard link to {target!r}, which is not a file earlier in the layer")
        local = self._local(path)
        self._parent(path, local)
        if local.is_dir():
            raise LayerFormatError(path, "a hard link where the layer has a directory")
        local.unlink(missing_ok=True)
        os.link(source, local)

    def _parent(self, path: str, local: Path) -> None:
        for parent in reversed(local.relative_to(self.root).parents[:-1]):
            if (self.root / parent).is_file():
                raise LayerFormatError(path, f"{parent} is a file earlier in the layer, not a directory")
        local.parent.mkdir(parents=True, exist_ok=True)

    def remove(self, path: str) -> None:
        self._close_current()
        self.removed.append(path)

    def close(self) -> None:
        self._close_current()
        if self.removed:
            lines = "".join(f"\\{p}\n" for p in self.removed)
            (self.root / TOMBSTONES).write_text(TOMBSTONES_HEADER + lines, encoding="utf-8")

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


def write_layer_folder(source: BinaryIO, target: Path, max_bytes: int = 0) -> int:
    """Parse the uncompressed layer tar `source` into the staging folder `target`; the entries read."""
    writer = FolderWriter(target, max_bytes)
    try:
        return parse(source, writer)
    except OSError as e:   # the disk, not the layer: ENOSPC, EACCES on the snapshot directory
        raise RuntimeFailure(f"cannot write the layer folder {target}: {e.strerror or e}") from None
    finally:
        writer.close()
