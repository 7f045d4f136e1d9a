"""Files written with backup semantics: the kernel32/advapi32 calls a Windows layer import needs.

`Win32Files` wraps CreateFileW / CreateDirectoryW (FILE_FLAG_BACKUP_SEMANTICS,
never following a reparse point), SetFileInformationByHandle(FileBasicInfo),
WriteFile, BackupWrite and the privilege dance (OpenProcessToken +
LookupPrivilegeValueW + AdjustTokenPrivileges for SeBackupPrivilege and
SeRestorePrivilege, once per process). The DLLs are injected (bound with
`_abi.KERNEL32_FILES` / `_abi.ADVAPI32_PRIVILEGES`), and so is the
thread's last-error reader (`ctypes.get_last_error` exists only on Windows),
so the same code runs against the CFUNCTYPE fake on Linux. Every failure is a
`FileApiError` naming the call, the Win32 error and the path.
"""

from __future__ import annotations

import ctypes as C
import threading
from collections.abc import Callable
from typing import Any

from runtime.base import RuntimeFailure
from runtime.windows import _abi
from runtime.windows._marshal import wstr
from runtime.windows.layer_tar import FileInfo

# Opened to restore a file's security descriptor with BackupWrite (hcsshim's baseLayerWriter asks the same).
RESTORE_ACCESS = (_abi.GENERIC_READ | _abi.GENERIC_WRITE | _abi.WRITE_DAC | _abi.WRITE_OWNER
                  | _abi.ACCESS_SYSTEM_SECURITY)
PLAIN_ACCESS = _abi.GENERIC_READ | _abi.GENERIC_WRITE
OPEN_FLAGS = _abi.FILE_FLAG_BACKUP_SEMANTICS | _abi.FILE_FLAG_OPEN_REPARSE_POINT
PRIVILEGES = ("SeBackupPrivilege", "SeRestorePrivilege")
MAX_WRITE = 1 << 30          # one WriteFile/BackupWrite call takes a DWORD count; chunks stay far below


class FileApiError(RuntimeFailure):
    def __init__(self, call: str, error: int, path: str, hint: str = "") -> None:
        self.call, self.error, self.path = call, error, path
        super().__init__(f"{call}({path}) failed with {_abi.win32_error_name(error)}" + (f": {hint}" if hint else ""))


class Win32Files:
    """Backup-semantics file writing over kernel32 + advapi32. Windows only (the fake DLL stands in on Linux)."""

    def __init__(self, kernel32: Any, advapi32: Any, last_error: Callable[[], int]) -> None:
        self._k = kernel32
        self._a = advapi32
        self._last_error = last_error
        self._lock = threading.Lock()
        self._privileged = False

    def _fail(self, call: str, path: str) -> FileApiError:
        return FileApiError(call, self._last_error(), path)

    # ---------------------------------------------------------------- privileges

    def enable_backup_privileges(self) -> None:
        """SeBackupPrivilege + SeRestorePrivilege on the process token (BackupWrite restores owners and SACLs)."""
        with self._lock:
            if self._privileged:
                return
            token = C.c_void_p()
            if not self._k_process_token(token):
                raise self._fail("OpenProcessToken", "<current process>")
            try:
                self._adjust(token)
            finally:
                self._k.CloseHandle(token)
            self._privileged = True

    def _k_process_token(self, token: C.c_void_p) -> bool:
        process = self._k.GetCurrentProcess()
        return bool(self._a.OpenProcessToken(process, _abi.TOKEN_ADJUST_PRIVILEGES | _abi.TOKEN_QUERY,
                                             C.byref(token)))

    def _adjust(self, token: C.c_void_p) -> None:
        wanted = _abi.TOKEN_PRIVILEGES2(PrivilegeCount=len(PRIVILEGES))
        for slot, name in zip(wanted.Privileges, PRIVILEGES):
            if not self._a.LookupPrivilegeValueW(None, wstr(name), C.byref(slot.Luid)):
                raise self._fail("LookupPrivilegeValueW", name)
            slot.Attributes = _abi.SE_PRIVILEGE_ENABLED
        if not self._a.AdjustTokenPrivileges(token, 0, C.byref(wanted), 0, None, None):
            raise self._fail("AdjustTokenPrivileges", "+".join(PRIVILEGES))
        # Success with ERROR_NOT_ALL_ASSIGNED means the account does not hold the privileges at all.
        if self._last_error() == _abi.ERROR_NOT_ALL_ASSIGNED:
            raise FileApiError("AdjustTokenPrivileges", _abi.ERROR_NOT_ALL_ASSIGNED, "+".join(PRIVILEGES),
                               "the account does not hold them; run the daemon as SYSTEM or an administrator")

    # ---------------------------------------------------------------- files

    def create_file(self, path: str, *, restore_security: bool) -> int:
        """A new file (CREATE_NEW: never truncates an existing file or hard link); its handle."""
        access = RESTORE_ACCESS if restore_security else PLAIN_ACCESS
        return self._open(path, access, _abi.CREATE_NEW)

    def create_directory(self, path: str, *, restore_security: bool) -> int:
        """Create `path` as a directory (an existing directory is fine) and open it; its handle."""
        if not self._k.CreateDirectoryW(wstr(path), None):
            error = self._last_error()
            if error != _abi.ERROR_ALREADY_EXISTS:
                raise FileApiError("CreateDirectoryW", error, path)
        return self.open_directory(path, restore_security=restore_security)

    def open_directory(self, path: str, *, restore_security: bool = False) -> int:
        return self._open(path, RESTORE_ACCESS if restore_security else PLAIN_ACCESS, _abi.OPEN_EXISTING)

    def _open(self, path: str, access: int, disposition: int) -> int:
        handle = self._k.CreateFileW(wstr(path), access, _abi.FILE_SHARE_READ, None, disposition, OPEN_FLAGS, None)
        if handle is None or handle == _abi.INVALID_HANDLE_VALUE:
            raise self._fail("CreateFileW", path)
        return int(handle)

    def set_basic_info(self, handle: int, path: str, info: FileInfo, *, attributes: bool = True) -> None:
        """Times and (unless `attributes` is False: 0 means "leave as is") attributes of an open file."""
        basic = _abi.FILE_BASIC_INFO(info.creation_time, info.last_access_time, info.last_write_time,
                                     info.change_time, info.attributes if attributes else 0)
        if not self._k.SetFileInformationByHandle(handle, _abi.FileBasicInfo, C.byref(basic), C.sizeof(basic)):
            raise self._fail("SetFileInformationByHandle", path)

    def write(self, handle: int, path: str, data: bytes) -> None:
        for start in range(0, len(data), MAX_WRITE):
            chunk = data[start:start + MAX_WRITE]
            done = _abi.DWORD(0)
            if not self._k.WriteFile(handle, chunk, len(chunk), C.byref(done), None) or done.value != len(chunk):
                raise self._fail("WriteFile", path)

    def backup_write(self, handle: int, path: str, data: bytes, context: C.c_void_p, *,
                     restore_security: bool) -> None:
        """Feed more of a Win32 backup stream to BackupWrite; `context` carries its state between calls."""
        for start in range(0, len(data), MAX_WRITE):
            chunk = data[start:start + MAX_WRITE]
            done = _abi.DWORD(0)
            if not self._k.BackupWrite(handle, chunk, len(chunk), C.byref(done), 0, int(restore_security),
                                       C.byref(context)) or done.value != len(chunk):
                raise self._fail("BackupWrite", path)

    def end_backup(self, handle: int, context: C.c_void_p, *, restore_security: bool) -> None:
        """Free BackupWrite's context (bAbort=TRUE), which it allocates on the first call."""
        if context.value:
            done = _abi.DWORD(0)
            self._k.BackupWrite(handle, None, 0, C.byref(done), 1, int(restore_security), C.byref(context))
            context.value = None

    def close(self, handle: int) -> None:
        self._k.CloseHandle(handle)
