"""The C ABI of the Windows DLLs cri-shim binds, as pure data.

Only fixed-width ctypes types are used: on Linux `ctypes.wintypes.DWORD`
(c_ulong) is 8 bytes and `c_wchar` is UTF-32, so declaring them would make the
binding differ between the Linux test run and Windows. Strings go in and out
as raw pointers (`c_void_p`) and are marshalled as UTF-16LE by `_marshal`.

Every table here is cross-checked in tests/windows/test_abi.py against the
mingw-w64 headers (computecore.h, computestorage.h, computenetwork.h,
winbase.h) and the `__imp_<name>` symbols of their import libraries. The
vmcompute.dll layer exports are not in mingw-w64; they are checked by hand
against hcsshim's `//sys` lines (see VMCOMPUTE_LAYERS).

Nothing here loads a DLL.
"""

from __future__ import annotations

import ctypes as C
import enum
from typing import Any

HRESULT = C.c_int32
DWORD = C.c_uint32
ULONG = C.c_uint32           # Windows ULONG is 32 bits on x64 (LLP64)
BOOL = C.c_int32
UINT64 = C.c_uint64
HANDLE = C.c_void_p
HCS_SYSTEM = C.c_void_p
HCS_PROCESS = C.c_void_p
HCS_OPERATION = C.c_void_p
HCN_HANDLE = C.c_void_p
WSTR_IN = C.c_void_p                 # PCWSTR: NUL-terminated UTF-16LE we own for the call
WSTR_OUT = C.POINTER(C.c_void_p)     # PWSTR*: the DLL allocates, we free exactly once
PVOID = C.c_void_p

INVALID_HANDLE_VALUE = (1 << 64) - 1
GENERIC_ALL = 0x10000000
INFINITE = 0xFFFFFFFF


class HCS_PROCESS_INFORMATION(C.Structure):
    _fields_ = [("ProcessId", DWORD), ("Reserved", DWORD),
                ("StdInput", HANDLE), ("StdOutput", HANDLE), ("StdError", HANDLE)]


class HCS_EVENT(C.Structure):
    _fields_ = [("Type", C.c_int32), ("EventData", C.c_void_p), ("Operation", HCS_OPERATION)]


class GUID(C.Structure):
    _fields_ = [("Data1", C.c_uint32), ("Data2", C.c_uint16), ("Data3", C.c_uint16),
                ("Data4", C.c_uint8 * 8)]


class WC_LAYER_DESCRIPTOR(C.Structure):
    _fields_ = [("LayerId", GUID), ("Flags", C.c_uint32), ("Path", C.c_void_p)]


class DriverInfo(C.Structure):
    _fields_ = [("Flavour", C.c_int32), ("HomeDir", C.c_void_p)]


class JOBOBJECT_BASIC_LIMIT_INFORMATION(C.Structure):
    _fields_ = [("PerProcessUserTimeLimit", C.c_int64), ("PerJobUserTimeLimit", C.c_int64),
                ("LimitFlags", DWORD), ("MinimumWorkingSetSize", C.c_size_t),
                ("MaximumWorkingSetSize", C.c_size_t), ("ActiveProcessLimit", DWORD),
                ("Affinity", C.c_size_t), ("PriorityClass", DWORD), ("SchedulingClass", DWORD)]


class IO_COUNTERS(C.Structure):
    _fields_ = [(n, C.c_uint64) for n in ("ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
                                          "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(C.Structure):
    _fields_ = [("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION), ("IoInfo", IO_COUNTERS),
                ("ProcessMemoryLimit", C.c_size_t), ("JobMemoryLimit", C.c_size_t),
                ("PeakProcessMemoryUsed", C.c_size_t), ("PeakJobMemoryUsed", C.c_size_t)]


class JOBOBJECT_CPU_RATE_CONTROL_INFORMATION(C.Structure):
    # The union of CpuRate / Weight / {MinRate, MaxRate} is 4 bytes; we only use CpuRate or Weight.
    _fields_ = [("ControlFlags", DWORD), ("Value", DWORD)]


class JOBOBJECT_BASIC_ACCOUNTING_INFORMATION(C.Structure):
    _fields_ = [("TotalUserTime", C.c_int64), ("TotalKernelTime", C.c_int64),
                ("ThisPeriodTotalUserTime", C.c_int64), ("ThisPeriodTotalKernelTime", C.c_int64),
                ("TotalPageFaultCount", DWORD), ("TotalProcesses", DWORD), ("ActiveProcesses", DWORD),
                ("TotalTerminatedProcesses", DWORD)]


# Job object constants (winnt.h).
JOB_OBJECT_ALL_ACCESS = 0x1F001F
JOB_OBJECT_LIMIT_JOB_MEMORY = 0x200
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_CPU_RATE_CONTROL_ENABLE = 0x1
JOB_OBJECT_CPU_RATE_CONTROL_WEIGHT_BASED = 0x2
JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP = 0x4
JobObjectBasicAccountingInformation = 1
JobObjectExtendedLimitInformation = 9
JobObjectCpuRateControlInformation = 15
CREATE_SUSPENDED = 0x4
CREATE_UNICODE_ENVIRONMENT = 0x400
CREATE_NEW_PROCESS_GROUP = 0x200
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102

Signature = tuple[Any, list[Any]]

# name -> (restype, argtypes). Bound as written; any change must keep test_abi green.
COMPUTECORE: dict[str, Signature] = {
    "HcsCreateOperation": (HCS_OPERATION, [PVOID, PVOID]),
    "HcsCloseOperation": (None, [HCS_OPERATION]),
    "HcsWaitForOperationResult": (HRESULT, [HCS_OPERATION, DWORD, WSTR_OUT]),
    "HcsWaitForOperationResultAndProcessInfo": (
        HRESULT, [HCS_OPERATION, DWORD, C.POINTER(HCS_PROCESS_INFORMATION), WSTR_OUT]),
    "HcsGetOperationResult": (HRESULT, [HCS_OPERATION, WSTR_OUT]),
    "HcsGetOperationResultAndProcessInfo": (
        HRESULT, [HCS_OPERATION, C.POINTER(HCS_PROCESS_INFORMATION), WSTR_OUT]),
    "HcsCancelOperation": (HRESULT, [HCS_OPERATION]),
    "HcsCreateComputeSystem": (HRESULT, [WSTR_IN, WSTR_IN, HCS_OPERATION, PVOID, C.POINTER(HCS_SYSTEM)]),
    "HcsOpenComputeSystem": (HRESULT, [WSTR_IN, DWORD, C.POINTER(HCS_SYSTEM)]),
    "HcsEnumerateComputeSystems": (HRESULT, [WSTR_IN, HCS_OPERATION]),
    "HcsStartComputeSystem": (HRESULT, [HCS_SYSTEM, HCS_OPERATION, WSTR_IN]),
    "HcsShutDownComputeSystem": (HRESULT, [HCS_SYSTEM, HCS_OPERATION, WSTR_IN]),
    "HcsTerminateComputeSystem": (HRESULT, [HCS_SYSTEM, HCS_OPERATION, WSTR_IN]),
    "HcsGetComputeSystemProperties": (HRESULT, [HCS_SYSTEM, HCS_OPERATION, WSTR_IN]),
    "HcsModifyComputeSystem": (HRESULT, [HCS_SYSTEM, HCS_OPERATION, WSTR_IN, HANDLE]),
    "HcsWaitForComputeSystemExit": (HRESULT, [HCS_SYSTEM, DWORD, WSTR_OUT]),
    "HcsCloseComputeSystem": (None, [HCS_SYSTEM]),
    "HcsCreateProcess": (HRESULT, [HCS_SYSTEM, WSTR_IN, HCS_OPERATION, PVOID, C.POINTER(HCS_PROCESS)]),
    "HcsOpenProcess": (HRESULT, [HCS_SYSTEM, DWORD, DWORD, C.POINTER(HCS_PROCESS)]),
    "HcsGetProcessInfo": (HRESULT, [HCS_PROCESS, HCS_OPERATION]),
    "HcsSignalProcess": (HRESULT, [HCS_PROCESS, HCS_OPERATION, WSTR_IN]),
    "HcsTerminateProcess": (HRESULT, [HCS_PROCESS, HCS_OPERATION, WSTR_IN]),
    "HcsModifyProcess": (HRESULT, [HCS_PROCESS, HCS_OPERATION, WSTR_IN]),
    "HcsGetProcessProperties": (HRESULT, [HCS_PROCESS, HCS_OPERATION, WSTR_IN]),
    "HcsWaitForProcessExit": (HRESULT, [HCS_PROCESS, DWORD, WSTR_OUT]),
    "HcsCloseProcess": (None, [HCS_PROCESS]),
    "HcsGrantVmAccess": (HRESULT, [WSTR_IN, WSTR_IN]),
    "HcsRevokeVmAccess": (HRESULT, [WSTR_IN, WSTR_IN]),
}

COMPUTESTORAGE: dict[str, Signature] = {
    "HcsImportLayer": (HRESULT, [WSTR_IN, WSTR_IN, WSTR_IN]),
    "HcsDestroyLayer": (HRESULT, [WSTR_IN]),
    "HcsSetupBaseOSLayer": (HRESULT, [WSTR_IN, HANDLE, WSTR_IN]),
    "HcsInitializeWritableLayer": (HRESULT, [WSTR_IN, WSTR_IN, WSTR_IN]),
    "HcsAttachLayerStorageFilter": (HRESULT, [WSTR_IN, WSTR_IN]),
    "HcsDetachLayerStorageFilter": (HRESULT, [WSTR_IN]),
    "HcsFormatWritableLayerVhd": (HRESULT, [HANDLE]),
    "HcsGetLayerVhdMountPath": (HRESULT, [HANDLE, WSTR_OUT]),
}

COMPUTENETWORK: dict[str, Signature] = {
    "HcnCreateNamespace": (HRESULT, [C.POINTER(GUID), WSTR_IN, C.POINTER(HCN_HANDLE), WSTR_OUT]),
    "HcnOpenNamespace": (HRESULT, [C.POINTER(GUID), C.POINTER(HCN_HANDLE), WSTR_OUT]),
    "HcnModifyNamespace": (HRESULT, [HCN_HANDLE, WSTR_IN, WSTR_OUT]),
    "HcnQueryNamespaceProperties": (HRESULT, [HCN_HANDLE, WSTR_IN, WSTR_OUT, WSTR_OUT]),
    "HcnDeleteNamespace": (HRESULT, [C.POINTER(GUID), WSTR_OUT]),
    "HcnCloseNamespace": (HRESULT, [HCN_HANDLE]),
    "HcnEnumerateNamespaces": (HRESULT, [WSTR_IN, WSTR_OUT, WSTR_OUT]),
    "HcnOpenEndpoint": (HRESULT, [C.POINTER(GUID), C.POINTER(HCN_HANDLE), WSTR_OUT]),
    "HcnQueryEndpointProperties": (HRESULT, [HCN_HANDLE, WSTR_IN, WSTR_OUT, WSTR_OUT]),
    "HcnDeleteEndpoint": (HRESULT, [C.POINTER(GUID), WSTR_OUT]),
    "HcnCloseEndpoint": (HRESULT, [HCN_HANDLE]),
}

# vmcompute.dll layer exports: not in mingw-w64. Checked by hand against hcsshim
# internal/wclayer (`//sys activateLayer(info *driverInfo, id string) (hr error) = vmcompute.ActivateLayer?`
# and siblings): every one takes `DriverInfo*` and a UTF-16 path and returns HRESULT.
VMCOMPUTE_LAYERS: dict[str, Signature] = {
    "ActivateLayer": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN]),
    "DeactivateLayer": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN]),
    "PrepareLayer": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN, C.POINTER(WC_LAYER_DESCRIPTOR), ULONG]),
    "UnprepareLayer": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN]),
    "GetLayerMountPath": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN, C.POINTER(UINT64), C.c_void_p]),
    "ExpandSandboxSize": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN, UINT64]),
    "NameToGuid": (HRESULT, [WSTR_IN, C.POINTER(GUID)]),
    # Layer import (runtime/windows/layer_import.py): hcsshim `importLayer(info, id, path, descriptors)`,
    # `processBaseImage(path)`, `processUtilityImage(path)`.
    "ImportLayer": (HRESULT, [C.POINTER(DriverInfo), WSTR_IN, WSTR_IN, C.POINTER(WC_LAYER_DESCRIPTOR), ULONG]),
    "ProcessBaseImage": (HRESULT, [WSTR_IN]),
    "ProcessUtilityImage": (HRESULT, [WSTR_IN]),
}

# kernel32.dll: job objects and handles (HostProcess containers, stdio).
KERNEL32: dict[str, Signature] = {
    "CreateJobObjectW": (HANDLE, [PVOID, WSTR_IN]),
    "OpenJobObjectW": (HANDLE, [DWORD, BOOL, WSTR_IN]),
    "GenerateConsoleCtrlEvent": (BOOL, [DWORD, DWORD]),
    "SetInformationJobObject": (BOOL, [HANDLE, C.c_int32, PVOID, DWORD]),
    "QueryInformationJobObject": (BOOL, [HANDLE, C.c_int32, PVOID, DWORD, C.POINTER(DWORD)]),
    "AssignProcessToJobObject": (BOOL, [HANDLE, HANDLE]),
    "TerminateJobObject": (BOOL, [HANDLE, C.c_uint32]),
    "ResumeThread": (DWORD, [HANDLE]),
    "WaitForSingleObject": (DWORD, [HANDLE, DWORD]),
    "GetExitCodeProcess": (BOOL, [HANDLE, C.POINTER(DWORD)]),
    "CloseHandle": (BOOL, [HANDLE]),
    "LocalFree": (PVOID, [PVOID]),
}

class FILE_BASIC_INFO(C.Structure):
    # LARGE_INTEGER x4 then a DWORD: 36 bytes, padded to 40 by the 8-byte alignment of the times.
    _fields_ = [("CreationTime", C.c_int64), ("LastAccessTime", C.c_int64), ("LastWriteTime", C.c_int64),
                ("ChangeTime", C.c_int64), ("FileAttributes", DWORD)]


class LUID(C.Structure):
    _fields_ = [("LowPart", DWORD), ("HighPart", C.c_int32)]


class LUID_AND_ATTRIBUTES(C.Structure):
    _fields_ = [("Luid", LUID), ("Attributes", DWORD)]


class TOKEN_PRIVILEGES2(C.Structure):
    """TOKEN_PRIVILEGES with room for the two privileges a layer import needs (Backup and Restore)."""
    _fields_ = [("PrivilegeCount", DWORD), ("Privileges", LUID_AND_ATTRIBUTES * 2)]


# kernel32.dll: files written with backup semantics (runtime/windows/layer_import.py).
KERNEL32_FILES: dict[str, Signature] = {
    "CreateFileW": (HANDLE, [WSTR_IN, DWORD, DWORD, PVOID, DWORD, DWORD, HANDLE]),
    "CreateDirectoryW": (BOOL, [WSTR_IN, PVOID]),
    "WriteFile": (BOOL, [HANDLE, PVOID, DWORD, C.POINTER(DWORD), PVOID]),
    "BackupWrite": (BOOL, [HANDLE, PVOID, DWORD, C.POINTER(DWORD), BOOL, BOOL, C.POINTER(C.c_void_p)]),
    "SetFileInformationByHandle": (BOOL, [HANDLE, C.c_int32, PVOID, DWORD]),
    "GetCurrentProcess": (HANDLE, []),
    "CloseHandle": (BOOL, [HANDLE]),
}

# advapi32.dll: SeBackupPrivilege / SeRestorePrivilege for BackupWrite.
ADVAPI32_PRIVILEGES: dict[str, Signature] = {
    "OpenProcessToken": (BOOL, [HANDLE, DWORD, C.POINTER(HANDLE)]),
    "LookupPrivilegeValueW": (BOOL, [WSTR_IN, WSTR_IN, C.POINTER(LUID)]),
    "AdjustTokenPrivileges": (BOOL, [HANDLE, BOOL, C.POINTER(TOKEN_PRIVILEGES2), DWORD, C.POINTER(TOKEN_PRIVILEGES2),
                                     C.POINTER(DWORD)]),
}

# File and token constants (winnt.h, fileapi.h, winerror.h).
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
WRITE_DAC = 0x40000
WRITE_OWNER = 0x80000
ACCESS_SYSTEM_SECURITY = 0x1000000
FILE_SHARE_READ = 0x1
CREATE_NEW = 1
OPEN_EXISTING = 3
FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
FileBasicInfo = 0
TOKEN_ADJUST_PRIVILEGES = 0x20
TOKEN_QUERY = 0x8
SE_PRIVILEGE_ENABLED = 0x2
ERROR_ALREADY_EXISTS = 183
ERROR_NOT_ALL_ASSIGNED = 1300

WIN32_ERRORS = {
    2: "ERROR_FILE_NOT_FOUND", 3: "ERROR_PATH_NOT_FOUND", 5: "ERROR_ACCESS_DENIED", 6: "ERROR_INVALID_HANDLE",
    32: "ERROR_SHARING_VIOLATION", 80: "ERROR_FILE_EXISTS", 87: "ERROR_INVALID_PARAMETER", 112: "ERROR_DISK_FULL",
    183: "ERROR_ALREADY_EXISTS", 206: "ERROR_FILENAME_EXCED_RANGE", 1300: "ERROR_NOT_ALL_ASSIGNED",
    1313: "ERROR_NO_SUCH_PRIVILEGE", 1314: "ERROR_PRIVILEGE_NOT_HELD",
}


def win32_error_name(code: int) -> str:
    return WIN32_ERRORS.get(code, f"Win32 error {code}")


class SERVICE_STATUS(C.Structure):
    _fields_ = [("dwServiceType", DWORD), ("dwCurrentState", DWORD), ("dwControlsAccepted", DWORD),
                ("dwWin32ExitCode", DWORD), ("dwServiceSpecificExitCode", DWORD), ("dwCheckPoint", DWORD),
                ("dwWaitHint", DWORD)]


class SERVICE_TABLE_ENTRYW(C.Structure):
    _fields_ = [("lpServiceName", C.c_void_p), ("lpServiceProc", C.c_void_p)]


# LPSERVICE_MAIN_FUNCTIONW and LPHANDLER_FUNCTION_EX (WINAPI = the one x64 convention).
SERVICE_MAIN = C.CFUNCTYPE(None, DWORD, C.c_void_p)
HANDLER_EX = C.CFUNCTYPE(DWORD, DWORD, DWORD, C.c_void_p, C.c_void_p)

# advapi32.dll: the service control manager (cri_shim.windows_service).
ADVAPI32: dict[str, Signature] = {
    "StartServiceCtrlDispatcherW": (BOOL, [C.POINTER(SERVICE_TABLE_ENTRYW)]),
    "RegisterServiceCtrlHandlerExW": (HANDLE, [WSTR_IN, HANDLER_EX, PVOID]),
    "SetServiceStatus": (BOOL, [HANDLE, C.POINTER(SERVICE_STATUS)]),
}

# ntdll.dll: NtResumeProcess is undocumented (used by hcsshim and Process Explorer); NTSTATUS is int32.
NTDLL: dict[str, Signature] = {
    "NtResumeProcess": (C.c_int32, [HANDLE]),
}

# ole32.dll: the allocator HCN strings come from.
OLE32: dict[str, Signature] = {
    "CoTaskMemFree": (None, [PVOID]),
}


class HResult(enum.IntEnum):
    """HCS HRESULTs (HCSHResult.md), as unsigned 32-bit values."""

    S_OK = 0
    E_INVALIDARG = 0x80070057
    ERROR_NOT_FOUND = 0x80070490
    IMAGE_MISMATCH = 0x80370101
    INVALID_STATE = 0x80370105
    UNEXPECTED_EXIT = 0x80370106
    INVALID_JSON = 0x8037010D
    SYSTEM_NOT_FOUND = 0x8037010E
    SYSTEM_ALREADY_EXISTS = 0x8037010F
    SYSTEM_ALREADY_STOPPED = 0x80370110
    OPERATION_NOT_STARTED = 0x80370115
    OPERATION_ALREADY_STARTED = 0x80370116
    OPERATION_PENDING = 0x80370117
    OPERATION_TIMEOUT = 0x80370118
    ACCESS_DENIED = 0x8037011B
    SERVICE_DISCONNECT = 0x8037011E
    PROCESS_ALREADY_STOPPED = 0x8037011F


# "Already gone" codes that hcsshim treats as success for terminate/shutdown/delete.
ALREADY_GONE = frozenset({
    HResult.SYSTEM_NOT_FOUND, HResult.SYSTEM_ALREADY_STOPPED, HResult.PROCESS_ALREADY_STOPPED,
    0xC0370110, 0xC037010E, 0x490, 0x5, HResult.ERROR_NOT_FOUND,
})


def unsigned(hr: int) -> int:
    """An int32 HRESULT from ctypes as the familiar 0x8037xxxx value."""
    return hr & 0xFFFFFFFF


def hresult_name(hr: int) -> str:
    value = unsigned(hr)
    try:
        return f"HCS_E_{HResult(value).name}" if value >> 16 == 0x8037 else HResult(value).name
    except ValueError:
        return f"0x{value:08X}"
