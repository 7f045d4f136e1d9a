"""Importing a Windows layer tar into a WCIFS layer folder on a Windows node.

`LayerImporter.import_layer(source, layer_dir, parents)` reads an uncompressed
layer tar through `layer_tar.parse` and leaves a layer folder HCS can mount
(`layer_mount.VmcomputeLayers`). `parents` are the parent layer folders,
immediate parent first, base last; none means a base layer.

Which API, and why (checked against hcsshim internal/wclayer and
pkg/ociwclayer, the code every containerd Windows node runs):

- Non-base layers go through vmcompute `ImportLayer(DriverInfo*, layerPath,
  importFolder, WC_LAYER_DESCRIPTOR* parents, n)`, as hcsshim's
  `legacyLayerWriter` + `ImportLayer` do, not through computestorage
  `HcsImportLayer`. Both take a staging ("transport") folder, but only the
  vmcompute one has a format anyone writes: hcsshim's legacy writer defines it
  and nothing upstream calls `HcsImportLayer` (hcsshim binds it in
  computestorage/ and never uses it), so its expected folder layout is
  undocumented. The mount path (`layer_mount`) is vmcompute's too, so one
  family of exports, with one way of naming layers (NameToGuid of the folder
  name), covers import and mount.
- The transport folder, as hcsshim's legacyLayerWriter writes it: `Files\\...`
  files are plain files holding the 4-byte FILE_ATTRIBUTE_* value followed by
  the raw Win32 backup stream (ImportLayer decodes them; their own times are
  set with FileBasicInfo, attributes left 0); a directory is a directory plus
  a `<dir>.$wcidirs$` file in the same format; `Hives\\...` files are applied
  with BackupWrite (security not restored). Deletions (whiteouts) and hard
  links are applied to the layer folder *after* ImportLayer (tombstoned paths
  removed, links created to the target in this layer or the first parent that
  has it), then directory times are put back, as hcsshim does. UtilityVM
  content in a non-base layer (a WS2016 multi-layer utility VM) is refused.
- Base layers are written straight into the layer folder with BackupWrite
  (security restored: SeBackupPrivilege + SeRestorePrivilege), then vmcompute
  `ProcessBaseImage(layer)` (blank.vhdx, blank-base.vhdx) and, when the layer
  has `UtilityVM\\Files`, `ProcessUtilityImage(layer\\UtilityVM)`, as hcsshim's
  baseLayerWriter does. The documented computestorage route
  (`HcsSetupBaseOSLayer` on a VHD made and formatted with virtdisk) needs
  virtdisk bindings and reproduces what ProcessBaseImage does in one call.
  The BCD files of a utility VM are also written to `bcd*.bak` in the layer
  root before processing mutates them (pkg/ociwclayer's mutatedFiles).

The staging folder is `<layer_dir>.import` next to the layer folder (the
image store's `.tmp-` prefix, so a crash leaves nothing a restart keeps) and
is removed in every outcome. Nothing here loads a DLL: `Win32Files` and the
`LayerNative` (VmcomputeLayers) are injected; `platform.layer_importer()`
builds the real ones.
"""

from __future__ import annotations

import ctypes as C
import logging
import os
import shutil
import stat
import struct
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from runtime.base import RuntimeFailure
from runtime.windows.backup_files import Win32Files
from runtime.windows.layer_tar import (
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    FileInfo,
    LayerFormatError,
    parse,
)

log = logging.getLogger(__name__)

STAGING_SUFFIX = ".import"
DIR_METADATA_SUFFIX = ".$wcidirs$"
UTILITY_VM = "UtilityVM"
UTILITY_VM_FILES = "UtilityVM\\Files"
# Processing the utility VM rewrites these; hcsshim keeps the originals as backup streams in the layer root.
MUTATED_BCD = {
    "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD": "bcd.bak",
    "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD.LOG": "bcd.log.bak",
    "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD.LOG1": "bcd.log1.bak",
    "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD.LOG2": "bcd.log2.bak",
}


class LayerImporter(Protocol):
    def import_layer(self, source: IO[bytes], layer_dir: Path, parents: Sequence[Path]) -> int:
        """Import the layer tar `source` into the empty folder `layer_dir` over `parents` (immediate parent
        first, base last; empty for a base layer); the number of tar entries read."""
        ...


class LayerNative(Protocol):
    """The vmcompute layer exports the importer needs (`layer_mount.VmcomputeLayers`)."""

    def import_layer(self, layer_dir: str, staging_dir: str, parents: Sequence[str]) -> None: ...

    def process_base_image(self, layer_dir: str) -> None: ...

    def process_utility_image(self, uvm_dir: str) -> None: ...


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "\\")


def long_path(path: Path, windows: bool = os.name == "nt") -> Path:
    """`\\\\?\\C:\\...` on Windows: base layers hold paths (WinSxS) longer than MAX_PATH, which CreateFileW and
    the os module only accept in this form unless long paths are enabled machine-wide. Unchanged elsewhere."""
    text = str(path)
    if not windows or text.startswith("\\\\?\\"):
        return path
    return Path("\\\\?\\" + os.path.abspath(text))


def _local(root: Path, path: str) -> Path:
    # layer_tar.windows_path already refused "..", empty parts, absolute paths and reserved characters.
    return root.joinpath(*path.split("\\"))


def _is_reparse_point(st: os.stat_result) -> bool:
    """A symbolic link or (Windows) any reparse point, junctions included."""
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_file_attributes", 0) & FILE_ATTRIBUTE_REPARSE_POINT)


def _resolve(root: Path, path: str, entry: str) -> Path:
    """`path` under an existing layer folder, refusing to pass through a reparse point on the way (a junction in
    a parent layer, or one ImportLayer made, must not let a hard link or a deletion reach outside `root`)."""
    current = root
    for part in path.split("\\")[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        if _is_reparse_point(st):
            raise LayerFormatError(entry, f"{part!r} in {root} is a link or junction; refusing to follow it")
    return _local(root, path)


def _remove(local: Path) -> None:
    """Delete a file, a directory tree, or a link / junction itself (never what it points to)."""
    try:
        st = os.lstat(local)
    except FileNotFoundError:
        return
    if _is_reparse_point(st):
        try:
            os.unlink(local)
        except (IsADirectoryError, PermissionError):
            os.rmdir(local)                     # a directory junction or directory symlink on Windows
    elif stat.S_ISDIR(st.st_mode):
        shutil.rmtree(local)
    else:
        os.unlink(local)


@dataclass
class _Open:
    """The file the parser is currently streaming into."""

    handle: int
    path: str
    backup: bool                      # BackupWrite; else WriteFile of the raw stream
    restore_security: bool
    context: C.c_void_p = field(default_factory=C.c_void_p)


class _Writer:
    """What both writers share: the open file, the byte budget, directory times, reparse-point directories."""

    def __init__(self, files: Win32Files, root: Path, max_bytes: int) -> None:
        self.files = files
        self.root = root
        self.max_bytes = max_bytes
        self.written = 0
        self.dirs: list[tuple[str, FileInfo]] = []
        self._reparse_points: list[str] = []
        self._open: list[_Open] = []      # the file, then its BCD backup copy if any

    def _check_path(self, path: str) -> None:
        # A junction or symbolic link in this layer becomes a reparse point: writing, linking or deleting below
        # it would go through it (hcsshim's safefile refuses the same).
        for d in self._reparse_points:
            if _is_under(path, d) and path != d:
                raise LayerFormatError(path, f"it is below {d}, a link or junction in the same layer")

    def _note(self, path: str, info: FileInfo) -> None:
        if info.attributes & FILE_ATTRIBUTE_DIRECTORY:
            self.dirs.append((path, info))
        if info.attributes & FILE_ATTRIBUTE_REPARSE_POINT:
            self._reparse_points.append(path)

    def _start(self, handle: int, path: str, *, backup: bool, restore_security: bool) -> None:
        self._open.append(_Open(handle, path, backup, restore_security))

    def write(self, data: bytes) -> None:
        if not self._open:
            raise LayerFormatError("<tar>", "stream data outside a file")
        self.written += len(data)
        if self.max_bytes and self.written > self.max_bytes:
            raise LayerFormatError(self._open[0].path, f"the layer is larger than images.max_layer_bytes "
                                                       f"({self.max_bytes} bytes)")
        for f in self._open:
            if f.backup:
                self.files.backup_write(f.handle, f.path, data, f.context, restore_security=f.restore_security)
            else:
                self.files.write(f.handle, f.path, data)

    def close_current(self) -> None:
        """Free BackupWrite's context and close every open handle, even if one of them fails."""
        opened, self._open = self._open, []
        with ExitStack() as stack:
            for f in opened:
                stack.callback(self.files.close, f.handle)
                if f.backup:
                    stack.callback(self.files.end_backup, f.handle, f.context, restore_security=f.restore_security)

    def reapply_directory_times(self, root: Path) -> None:
        """Deleting and linking inside a directory changes its times; put back the ones the tar gave."""
        for path, info in reversed(self.dirs):          # children first
            local = str(_local(root, path))
            handle = self.files.open_directory(local)
            try:
                self.files.set_basic_info(handle, local, info)
            finally:
                self.files.close(handle)

    def _replace_file(self, path: str, local: Path) -> None:
        """Make room for a file entry: a later entry replaces an earlier one, a directory is a clash."""
        if local.is_dir() and not local.is_symlink():
            raise LayerFormatError(path, "a file and a directory at the same path in one layer")
        if os.path.lexists(local):
            local.unlink()                                  # never truncate: it may be a hard link
        local.parent.mkdir(parents=True, exist_ok=True)


class BaseLayerWriter(_Writer):
    """A `layer_tar.LayerWriter` applying every entry with BackupWrite straight into a base layer folder."""

    def __init__(self, files: Win32Files, root: Path, max_bytes: int = 0) -> None:
        super().__init__(files, root, max_bytes)
        self.has_utility_vm = False

    def add(self, path: str, info: FileInfo, sddl: str) -> None:
        self.close_current()
        self._check_path(path)
        if sddl:
            raise LayerFormatError(path, "MSWINDOWS.sd (SDDL) without MSWINDOWS.rawsd is not supported by the "
                                         "Windows importer yet")
        if path == UTILITY_VM_FILES:
            self.has_utility_vm = True
        local = _local(self.root, path)
        if info.attributes & FILE_ATTRIBUTE_DIRECTORY:
            if local.exists() and not local.is_dir():
                raise LayerFormatError(path, "a file and a directory at the same path in one layer")
            local.parent.mkdir(parents=True, exist_ok=True)
            handle = self.files.create_directory(str(local), restore_security=True)
        else:
            self._replace_file(path, local)
            handle = self.files.create_file(str(local), restore_security=True)
        self._note(path, info)
        self._start(handle, str(local), backup=True, restore_security=True)
        self.files.set_basic_info(handle, str(local), info)
        backup_name = MUTATED_BCD.get(path)
        if backup_name is not None:
            copy = self.root / backup_name
            self._replace_file(backup_name, copy)
            self._start(self.files.create_file(str(copy), restore_security=False), str(copy), backup=True,
                        restore_security=False)

    def add_link(self, path: str, target: str) -> None:
        self.close_current()
        self._check_path(path)
        self._check_path(target)
        source = _local(self.root, target)
        if not source.is_file() or source.is_symlink():
            raise LayerFormatError(path, f"hard link to {target!r}, which is not a file earlier in the layer")
        local = _local(self.root, path)
        self._replace_file(path, local)
        os.link(source, local)

    def remove(self, path: str) -> None:
        raise LayerFormatError(path, "a base layer cannot delete files (whiteout in a layer without parents)")


@dataclass(frozen=True)
class _Link:
    path: str
    target: str
    target_root: Path


class TransportWriter(_Writer):
    """A `layer_tar.LayerWriter` writing vmcompute ImportLayer's transport folder (see the module docstring)."""

    def __init__(self, files: Win32Files, staging: Path, layer_dir: Path, parents: Sequence[Path],
                 max_bytes: int = 0) -> None:
        super().__init__(files, staging, max_bytes)
        self.layer_dir = layer_dir
        self.parents = list(parents)
        self.tombstones: list[str] = []
        self.links: list[_Link] = []
        self._added: set[str] = set()

    def add(self, path: str, info: FileInfo, sddl: str) -> None:
        self.close_current()
        self._check_path(path)
        if _is_under(path, UTILITY_VM):
            raise LayerFormatError(path, "UtilityVM content outside the base layer is not supported")
        if sddl and path.startswith("Files"):
            raise LayerFormatError(path, "MSWINDOWS.sd (SDDL) without MSWINDOWS.rawsd is not supported by the "
                                         "Windows importer yet")
        local = _local(self.root, path)
        hive = _is_under(path, "Hives")
        if info.attributes & FILE_ATTRIBUTE_DIRECTORY:
            if local.exists() and not local.is_dir():
                raise LayerFormatError(path, "a file and a directory at the same path in one layer")
            local.mkdir(parents=True, exist_ok=True)
            local = local.with_name(local.name + DIR_METADATA_SUFFIX)
        self._note(path, info)
        self._replace_file(path, local)
        handle = self.files.create_file(str(local), restore_security=False)
        self._start(handle, str(local), backup=hive, restore_security=False)
        self.files.set_basic_info(handle, str(local), info, attributes=False)
        if not hive:
            self.files.write(handle, str(local), struct.pack("<I", info.attributes))
        self._added.add(path)

    def add_link(self, path: str, target: str) -> None:
        self.close_current()
        self._check_path(path)
        self._check_path(target)
        if not (_is_under(path, "Files") and _is_under(target, "Files")):
            raise LayerFormatError(path, "hard links are only allowed between files under Files/")
        if target in self._added:
            root = self.layer_dir
        else:
            found = [p for p in self.parents if os.path.lexists(_resolve(p, target, path))]
            if not found:
                raise LayerFormatError(path, f"hard link target {target!r} is neither in this layer nor in a "
                                             "parent layer")
            root = found[0]
        self.links.append(_Link(path, target, root))
        self._added.add(path)

    def remove(self, path: str) -> None:
        self.close_current()
        self._check_path(path)
        if not _is_under(path, "Files") or path == "Files":
            raise LayerFormatError(path, "only files under Files/ can be deleted by a whiteout")
        self.tombstones.append(path)

    def apply_after_import(self) -> None:
        """What ImportLayer does not do: deletions, hard links, then the directory times again."""
        for path in self.tombstones:
            _remove(_resolve(self.layer_dir, path, path))
        for link in self.links:
            local = _resolve(self.layer_dir, link.path, link.path)
            source = _resolve(link.target_root, link.target, link.path)
            if _is_reparse_point(os.lstat(source)):
                raise LayerFormatError(link.path, f"hard link to {link.target!r}, which is a link or junction")
            _remove(local)
            local.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, local)
        self.reapply_directory_times(self.layer_dir)


class WclayerImporter:
    """`LayerImporter` on a Windows node: BackupWrite + vmcompute ImportLayer / ProcessBaseImage."""

    def __init__(self, files: Win32Files, native: LayerNative, max_bytes: int = 0) -> None:
        self._files = files
        self._native = native
        self._max_bytes = max_bytes

    def import_layer(self, source: IO[bytes], layer_dir: Path, parents: Sequence[Path]) -> int:
        what = f"importing the Windows layer {layer_dir}" + (f" over {len(parents)} parent layers" if parents
                                                              else " (base layer)")
        try:
            self._files.enable_backup_privileges()
            if parents:
                return self._import_over(source, layer_dir, parents)
            return self._import_base(source, layer_dir)
        except LayerFormatError:
            raise                                # names the tar entry; the puller adds the layer digest
        except RuntimeFailure as e:
            raise RuntimeFailure(f"{what}: {e.message}") from None
        except OSError as e:
            raise RuntimeFailure(f"{what}: {e.strerror or e} ({e.filename or layer_dir})") from None

    def _import_base(self, source: IO[bytes], layer_dir: Path) -> int:
        writer = BaseLayerWriter(self._files, long_path(layer_dir), self._max_bytes)
        try:
            count = parse(source, writer)
        finally:
            writer.close_current()
        writer.reapply_directory_times(writer.root)
        self._native.process_base_image(str(layer_dir))
        if writer.has_utility_vm:
            self._native.process_utility_image(str(layer_dir / UTILITY_VM))
        return count

    def _import_over(self, source: IO[bytes], layer_dir: Path, parents: Sequence[Path]) -> int:
        staging = layer_dir.with_name(layer_dir.name + STAGING_SUFFIX)
        shutil.rmtree(staging, ignore_errors=True)        # a crashed earlier attempt at the same folder
        staging.mkdir()
        # File work uses long paths; vmcompute gets the paths as given (hcsshim passes plain ones).
        writer = TransportWriter(self._files, long_path(staging), long_path(layer_dir),
                                 [long_path(p) for p in parents], self._max_bytes)
        try:
            try:
                count = parse(source, writer)
            finally:
                writer.close_current()
            self._native.import_layer(str(layer_dir), str(staging), [str(p) for p in parents])
            writer.apply_after_import()
            return count
        finally:
            _remove_staging(staging)


def _remove_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if os.path.lexists(staging):
        log.warning("could not remove the layer staging folder %s; the image store removes it at its next start",
                    staging)
