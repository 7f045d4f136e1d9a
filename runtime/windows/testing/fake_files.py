"""TEST ONLY: kernel32/advapi32 file and privilege calls, and vmcompute's import exports, as CFUNCTYPE fakes.

`FakeWin32` implements `_abi.KERNEL32_FILES` and `_abi.ADVAPI32_PRIVILEGES`
on real Linux files, so `backup_files.Win32Files` and the layer importer run
through ctypes exactly as on Windows: handles, out-pointers, BackupWrite's
context. It records what each call received (every BackupWrite byte, per
file, in order) and can fail any call with a Win32 error. `FakeVmcomputeImport`
implements ImportLayer / ProcessBaseImage / ProcessUtilityImage / NameToGuid:
it records the paths and parent descriptors it is given, snapshots the staging
folder at the call, and imitates the import (decodes the transport folder into
the layer folder) so the steps after it can be checked. Neither proves what
Windows does with the bytes.
"""

from __future__ import annotations

import ctypes as C
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runtime.windows import _abi, hcs
from runtime.windows._marshal import guid_out
from runtime.windows.backup_files import Win32Files
from runtime.windows.layer_import import DIR_METADATA_SUFFIX, WclayerImporter
from runtime.windows.layer_mount import VmcomputeLayers, folder_name
from runtime.windows.testing.fake_dll import FakeDll, read_in
from runtime.windows.testing.fake_hcs import s32
from runtime.windows.testing.fakes import FAKE_LAYER_NAMESPACE

PROCESS = 0xFFFFFFFFFFFFFFFF      # GetCurrentProcess's pseudo handle (-1)
TOKEN = 0x7070


@dataclass
class FakeHandle:
    path: str
    directory: bool
    access: int
    flags: int
    file: IO[bytes] | None
    backup: bytearray = field(default_factory=bytearray)       # what BackupWrite received, in order
    backup_calls: int = 0
    process_security: set[bool] = field(default_factory=set)


class FakeWin32:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_error = 0
        self.handles: dict[int, FakeHandle] = {}
        self.closed: list[FakeHandle] = []
        self.next_handle = 0x100
        self.contexts: set[int] = set()
        self.privileges: list[str] = []
        self.privilege_not_held = False
        self.basic_info: dict[str, _abi.FILE_BASIC_INFO] = {}
        self.backup_write_calls = 0
        self.fail_backup_write_at: int | None = None          # the n-th BackupWrite call (1-based) fails
        self.fail_error = 112                                  # ERROR_DISK_FULL

    def _error(self, code: int) -> int:
        self.last_error = code
        return 0

    # kernel32 ---------------------------------------------------------------

    def GetCurrentProcess(self) -> int:
        return PROCESS

    def CreateDirectoryW(self, path_p: int, sa: int | None) -> int:
        path = read_in(path_p) or ""
        try:
            os.mkdir(path)
        except FileExistsError:
            return self._error(_abi.ERROR_ALREADY_EXISTS)
        except FileNotFoundError:
            return self._error(3)
        self.last_error = 0
        return 1

    def CreateFileW(self, path_p: int, access: int, share: int, sa: int | None, disposition: int, flags: int,
                    template: int | None) -> int:
        path = read_in(path_p) or ""
        assert flags & _abi.FILE_FLAG_BACKUP_SEMANTICS and flags & _abi.FILE_FLAG_OPEN_REPARSE_POINT
        assert sa is None and template is None
        if disposition == _abi.OPEN_EXISTING:
            if not os.path.isdir(path):
                self._error(2)
                return _abi.INVALID_HANDLE_VALUE
            f = None
        elif disposition == _abi.CREATE_NEW:
            try:
                f = open(path, "xb")
            except FileExistsError:
                self._error(80)
                return _abi.INVALID_HANDLE_VALUE
            except FileNotFoundError:
                self._error(3)
                return _abi.INVALID_HANDLE_VALUE
        else:
            raise AssertionError(f"unexpected creation disposition {disposition}")
        with self.lock:
            self.next_handle += 4
            self.handles[self.next_handle] = FakeHandle(path, f is None, access, flags, f)
            return self.next_handle

    def _handle(self, h: int | None) -> FakeHandle:
        assert h in self.handles, f"handle {h} is not open"
        return self.handles[h]

    def SetFileInformationByHandle(self, h: int, klass: int, buf: int, size: int) -> int:
        assert klass == _abi.FileBasicInfo and size == C.sizeof(_abi.FILE_BASIC_INFO)
        self.basic_info[self._handle(h).path] = _abi.FILE_BASIC_INFO.from_buffer_copy(C.string_at(buf, size))
        return 1

    def WriteFile(self, h: int, buf: int, n: int, written: Any, overlapped: int | None) -> int:
        handle = self._handle(h)
        assert handle.file is not None and overlapped is None
        handle.file.write(C.string_at(buf, n))
        written[0] = n
        return 1

    def BackupWrite(self, h: int, buf: int | None, n: int, written: Any, abort: int, security: int,
                    context: Any) -> int:
        handle = self._handle(h)
        if abort:
            assert context[0] in self.contexts, "BackupWrite abort without a live context"
            self.contexts.discard(context[0])
            return 1
        self.backup_write_calls += 1
        if self.fail_backup_write_at == self.backup_write_calls:
            return self._error(self.fail_error)
        if not context[0]:
            with self.lock:
                self.next_handle += 4
                context[0] = self.next_handle
                self.contexts.add(self.next_handle)
        assert context[0] in self.contexts, "BackupWrite continued with a context it did not hand out"
        data = C.string_at(buf or 0, n) if n else b""
        handle.backup += data
        handle.backup_calls += 1
        handle.process_security.add(bool(security))
        if handle.file is not None:
            handle.file.write(data)          # so the fake layer folder shows what a restore would hold
        written[0] = n
        return 1

    def CloseHandle(self, h: int) -> int:
        if h == TOKEN:
            return 1
        handle = self.handles.pop(h)
        if handle.file is not None:
            handle.file.close()
        self.closed.append(handle)
        return 1

    # advapi32 ---------------------------------------------------------------

    def OpenProcessToken(self, process: int, access: int, token: Any) -> int:
        assert process == PROCESS and access & _abi.TOKEN_ADJUST_PRIVILEGES
        token[0] = TOKEN
        return 1

    def LookupPrivilegeValueW(self, system: int | None, name_p: int, luid: Any) -> int:
        assert system is None
        name = read_in(name_p) or ""
        luid.contents.LowPart = {"SeBackupPrivilege": 17, "SeRestorePrivilege": 18}[name]
        return 1

    def AdjustTokenPrivileges(self, token: int, disable_all: int, state: Any, size: int, previous: int | None,
                              returned: Any) -> int:
        assert token == TOKEN and not disable_all
        s = state.contents
        for i in range(s.PrivilegeCount):
            assert s.Privileges[i].Attributes == _abi.SE_PRIVILEGE_ENABLED
            self.privileges.append({17: "SeBackupPrivilege", 18: "SeRestorePrivilege"}[s.Privileges[i].Luid.LowPart])
        self.last_error = _abi.ERROR_NOT_ALL_ASSIGNED if self.privilege_not_held else 0
        return 1

    # checks ----------------------------------------------------------------

    def backup_of(self, path: str | Path) -> bytes:
        """Everything BackupWrite received for `path`, over all its handles."""
        return b"".join(bytes(h.backup) for h in self.closed + list(self.handles.values()) if h.path == str(path))

    def leaks(self) -> list[str]:
        return [f"open handle {h.path}" for h in self.handles.values()] + \
               [f"BackupWrite context {c:#x} never freed" for c in self.contexts]


@dataclass
class ImportCall:
    layer: str
    staging: str
    parents: list[tuple[str, str, int]]          # (LayerId, Path, Flags) of each descriptor, in order
    staged: dict[str, bytes]                     # the staging folder's files at the call (relative POSIX paths)
    staged_dirs: list[str]
    parents_exist: bool                          # every parent folder was on disk at the call


class FakeVmcomputeImport:
    def __init__(self) -> None:
        self.imports: list[ImportCall] = []
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}                    # export name -> HRESULT to return

    def NameToGuid(self, name_p: int, g: Any) -> int:
        raw = uuid.uuid5(FAKE_LAYER_NAMESPACE, folder_name(read_in(name_p) or "")).bytes_le
        C.memmove(C.addressof(g.contents), raw, 16)
        return 0

    def ImportLayer(self, info: Any, layer_p: int, staging_p: int, descriptors: Any, count: int) -> int:
        assert (info.contents.Flavour, read_in(info.contents.HomeDir)) == (1, "")
        layer, staging = read_in(layer_p) or "", read_in(staging_p) or ""
        parents = [(str(guid_out(descriptors[i].LayerId)), read_in(descriptors[i].Path) or "", descriptors[i].Flags)
                   for i in range(count)]
        root = Path(staging)
        staged = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        dirs = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_dir()]
        self.imports.append(ImportCall(layer, staging, parents, staged, dirs,
                                       all(os.path.isdir(p) for _, p, _ in parents)))
        self.calls.append(("ImportLayer", layer))
        if "ImportLayer" in self.fail:
            return s32(self.fail["ImportLayer"])
        _imitate_import(root, Path(layer))
        return 0

    def ProcessBaseImage(self, path_p: int) -> int:
        path = read_in(path_p) or ""
        self.calls.append(("ProcessBaseImage", path))
        if "ProcessBaseImage" in self.fail:
            return s32(self.fail["ProcessBaseImage"])
        (Path(path) / "blank.vhdx").write_bytes(b"vhdxfile")
        (Path(path) / "blank-base.vhdx").write_bytes(b"vhdxfile")
        return 0

    def ProcessUtilityImage(self, path_p: int) -> int:
        path = read_in(path_p) or ""
        self.calls.append(("ProcessUtilityImage", path))
        if "ProcessUtilityImage" in self.fail:
            return s32(self.fail["ProcessUtilityImage"])
        (Path(path) / "SystemTemplate.vhdx").write_bytes(b"vhdxfile")
        return 0


def _imitate_import(staging: Path, layer: Path) -> None:
    """Files\\ entries lose their 4-byte attribute prefix (the rest is the backup stream a restore applies);
    Hives\\ files are copied; `.$wcidirs$` files only describe their directory."""
    for p in sorted(staging.rglob("*")):
        rel = p.relative_to(staging)
        target = layer / rel
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not p.name.endswith(DIR_METADATA_SUFFIX):
            data = p.read_bytes()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[4:] if rel.parts[0] == "Files" else data)


@dataclass
class FakeImportNode:
    win32: FakeWin32
    vmcompute: FakeVmcomputeImport
    importer: WclayerImporter


def fake_importer(max_bytes: int = 0) -> FakeImportNode:
    """A `WclayerImporter` bound through real ctypes to the fakes above."""
    win32, vm = FakeWin32(), FakeVmcomputeImport()
    kernel32 = FakeDll(win32, _abi.KERNEL32_FILES)
    advapi32 = FakeDll(win32, _abi.ADVAPI32_PRIVILEGES)
    vmcompute = FakeDll(vm, _abi.VMCOMPUTE_LAYERS)
    for dll, table in ((kernel32, _abi.KERNEL32_FILES), (advapi32, _abi.ADVAPI32_PRIVILEGES),
                       (vmcompute, _abi.VMCOMPUTE_LAYERS)):
        hcs.bind(dll, table)
    files = Win32Files(kernel32, advapi32, lambda: win32.last_error)
    return FakeImportNode(win32, vm, WclayerImporter(files, VmcomputeLayers(vmcompute, sleep=lambda s: None),
                                                     max_bytes))
