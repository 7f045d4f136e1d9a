"""The ctypes signatures and structs cri-shim binds, checked against independent sources.

Sources: the mingw-w64 headers (Debian mingw-w64-common: computecore.h,
computestorage.h, computenetwork.h, winbase.h, ...) and import libraries
(mingw-w64-x86-64-dev: libcomputecore.a, ...), which are written from
Microsoft's SDK independently of us. The undocumented vmcompute.dll layer
exports are not in mingw; they are compared with a transcription of hcsshim's
`//sys` lines below. This proves we declare what the SDK declares; whether the
DLLs on a given Windows build export and behave accordingly is windows_only.
"""

from __future__ import annotations

import ctypes as C
import re
from pathlib import Path
from typing import Any

import pytest

from runtime.windows import _abi

INCLUDE = Path("/usr/share/mingw-w64/include")
LIB = Path("/usr/x86_64-w64-mingw32/lib")
PROTOTYPE = re.compile(r"^\s*(?:WINBASEAPI\s+|WINADVAPI\s+)?(\w[\w\s\*]*?)\s+WINAPI\s+(\w+)\s*\(([^)]*)\)\s*;",
                       re.M)

# C type (as written in the headers) -> the class of value crossing the ABI.
C_KIND = {
    "HRESULT": "int32", "WINBOOL": "int32", "BOOL": "int32", "HCS_EVENT_OPTIONS": "int32",
    "JOBOBJECTINFOCLASS": "int32",
    "DWORD": "uint32", "ULONG": "uint32", "UINT": "uint32",
    "UINT64": "uint64",
    "void": "void", "VOID": "void",
    "HANDLE": "ptr", "HCS_SYSTEM": "ptr", "HCS_PROCESS": "ptr", "HCS_OPERATION": "ptr", "HCN_NETWORK": "ptr",
    "HCN_NAMESPACE": "ptr", "HCN_ENDPOINT": "ptr", "HLOCAL": "ptr", "LPVOID": "ptr", "PVOID": "ptr",
    "void*": "ptr", "constvoid*": "ptr", "LPSECURITY_ATTRIBUTES": "ptr", "constSECURITY_DESCRIPTOR*": "ptr",
    "HCS_OPERATION_COMPLETION": "ptr", "HCS_EVENT_CALLBACK": "ptr",
    "PCWSTR": "wstr", "LPCWSTR": "wstr",
    "PWSTR*": "out_wstr",
    "HCS_SYSTEM*": "out_ptr", "HCS_PROCESS*": "out_ptr", "PHCN_NAMESPACE": "out_ptr", "PHCN_ENDPOINT": "out_ptr",
    "PHCN_NETWORK": "out_ptr",
    "LPDWORD": "out_uint32",
    "REFGUID": "guid",
    "HCS_PROCESS_INFORMATION*": "process_information",
    "SERVICE_STATUS_HANDLE": "ptr", "LPHANDLER_FUNCTION_EX": "ptr",
    "CONSTSERVICE_TABLE_ENTRYW*": "service_table", "LPSERVICE_STATUS": "service_status",
    "LPCVOID": "ptr", "LPBYTE": "ptr", "LPOVERLAPPED": "ptr", "LPVOID*": "out_ptr", "PHANDLE": "out_ptr",
    "FILE_INFO_BY_HANDLE_CLASS": "int32", "PDWORD": "out_uint32", "PLUID": "luid",
    "PTOKEN_PRIVILEGES": "token_privileges",
}


def ctypes_kind(t: Any) -> set[str]:
    """The C kinds a ctypes type can stand for (a c_void_p is any pointer, strings included)."""
    if t is None:
        return {"void"}
    if t is C.c_int32:
        return {"int32"}
    if t is C.c_uint32:
        return {"uint32"}
    if t is C.c_uint64:
        return {"uint64"}
    if t is C.c_void_p:
        return {"ptr", "wstr"}
    if t is C.POINTER(C.c_void_p):
        return {"out_wstr", "out_ptr"}
    if t is C.POINTER(C.c_uint32):
        return {"out_uint32"}
    if t is C.POINTER(_abi.GUID):
        return {"guid"}
    if t is C.POINTER(_abi.HCS_PROCESS_INFORMATION):
        return {"process_information"}
    if t is C.POINTER(_abi.SERVICE_TABLE_ENTRYW):
        return {"service_table"}
    if t is C.POINTER(_abi.SERVICE_STATUS):
        return {"service_status"}
    if t is _abi.HANDLER_EX:
        return {"ptr"}
    if t is C.POINTER(_abi.LUID):
        return {"luid"}
    if t is C.POINTER(_abi.TOKEN_PRIVILEGES2):
        return {"token_privileges"}
    raise AssertionError(f"unexpected ctypes type {t}")


def c_kind(decl: str) -> str:
    decl = decl.strip()
    words = decl.replace("*", " * ").split()
    # Drop the parameter name (the last identifier, unless the declaration is a bare type).
    if len(words) > 1 and words[-1] not in ("*",) and re.fullmatch(r"\w+", words[-1]) and \
            words[-1] not in C_KIND:
        words = words[:-1]
    key = "".join(words)
    if key not in C_KIND:
        raise AssertionError(f"no ABI class for C type {decl!r} ({key})")
    return C_KIND[key]


def prototypes(*headers: str) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for h in headers:
        for ret, name, params in PROTOTYPE.findall((INCLUDE / h).read_text()):
            args = [] if params.strip() in ("", "void", "VOID") else [p for p in params.split(",")]
            out[name] = (ret.strip(), args)
    return out


def exports(library: str) -> bytes:
    return (LIB / library).read_bytes()


TABLES = [
    ("computecore", _abi.COMPUTECORE, ("computecore.h",), "libcomputecore.a"),
    ("computestorage", _abi.COMPUTESTORAGE, ("computestorage.h",), "libcomputestorage.a"),
    ("computenetwork", _abi.COMPUTENETWORK, ("computenetwork.h",), "libcomputenetwork.a"),
    ("kernel32", _abi.KERNEL32, ("winbase.h", "handleapi.h", "processthreadsapi.h", "synchapi.h", "wincon.h"),
     "libkernel32.a"),
    ("advapi32", _abi.ADVAPI32, ("winsvc.h",), "libadvapi32.a"),
    ("kernel32_files", _abi.KERNEL32_FILES, ("fileapi.h", "winbase.h", "processthreadsapi.h", "handleapi.h"),
     "libkernel32.a"),
    ("advapi32_privileges", _abi.ADVAPI32_PRIVILEGES, ("winbase.h", "processthreadsapi.h", "securitybaseapi.h"),
     "libadvapi32.a"),
]


@pytest.fixture(scope="module", autouse=True)
def mingw_installed() -> None:
    if not (INCLUDE / "computecore.h").exists() or not (LIB / "libcomputecore.a").exists():
        pytest.fail("mingw-w64-common and mingw-w64-x86-64-dev are required (make deps installs them)")


@pytest.mark.parametrize("dll, table, headers, library", TABLES, ids=[t[0] for t in TABLES])
def test_every_bound_function_matches_the_sdk_prototype(dll: str, table: dict[str, _abi.Signature],
                                                        headers: tuple[str, ...], library: str) -> None:
    protos = prototypes(*headers)
    problems = []
    for name, (restype, argtypes) in table.items():
        if name not in protos:
            problems.append(f"{name}: not declared in {headers}")
            continue
        ret, params = protos[name]
        if c_kind(ret) not in ctypes_kind(restype):
            problems.append(f"{name}: returns {ret}, bound as {restype}")
        if len(params) != len(argtypes):
            problems.append(f"{name}: {len(params)} parameters in the header, {len(argtypes)} bound")
            continue
        for i, (decl, t) in enumerate(zip(params, argtypes)):
            if c_kind(decl) not in ctypes_kind(t):
                problems.append(f"{name} arg {i}: {decl.strip()!r} bound as {t}")
    assert problems == []


@pytest.mark.parametrize("dll, table, headers, library", TABLES, ids=[t[0] for t in TABLES])
def test_every_bound_function_is_exported_by_the_import_library(dll: str, table: dict[str, _abi.Signature],
                                                                headers: tuple[str, ...], library: str) -> None:
    data = exports(library)
    missing = [n for n in table if b"__imp_" + n.encode() + b"\0" not in data]
    assert missing == []


def test_the_allocator_and_ntdll_helpers_are_exported() -> None:
    assert b"__imp_CoTaskMemFree\0" in exports("libole32.a")
    assert b"__imp_NtResumeProcess\0" in exports("libntdll.a")
    assert re.search(r"CoTaskMemFree\s*\(\s*LPVOID", (INCLUDE / "combaseapi.h").read_text())


def test_the_parser_sees_the_whole_computecore_api() -> None:
    # If the header format changed and the regex missed prototypes, the checks above would pass vacuously.
    assert len(prototypes("computecore.h")) >= 52
    assert len(prototypes("computestorage.h")) >= 12
    assert set(_abi.COMPUTECORE) <= set(prototypes("computecore.h"))


def test_the_checker_rejects_a_wrong_signature() -> None:
    protos = prototypes("computecore.h")
    ret, params = protos["HcsWaitForOperationResult"]
    assert c_kind(params[1]) == "uint32"
    assert c_kind(params[1]) not in ctypes_kind(C.c_uint64)     # a DWORD bound as 64-bit would be caught
    assert c_kind(params[2]) not in ctypes_kind(C.c_void_p)     # PWSTR* bound as PCWSTR would be caught


# hcsshim internal/wclayer `//sys` lines (vmcompute.dll), transcribed: Go string -> PCWSTR, *driverInfo ->
# pointer, []WC_LAYER_DESCRIPTOR -> (pointer, count), *uintptr -> pointer to a 64-bit integer, uint64 -> uint64.
VMCOMPUTE_FROM_HCSSHIM = {
    "ActivateLayer": ["driverInfo*", "string"],
    "DeactivateLayer": ["driverInfo*", "string"],
    "PrepareLayer": ["driverInfo*", "string", "descriptors", "count"],
    "UnprepareLayer": ["driverInfo*", "string"],
    "GetLayerMountPath": ["driverInfo*", "string", "uintptr*", "uint16*"],
    "ExpandSandboxSize": ["driverInfo*", "string", "uint64"],
    "NameToGuid": ["string", "GUID*"],
    "ImportLayer": ["driverInfo*", "string", "string", "descriptors", "count"],
    "ProcessBaseImage": ["string"],
    "ProcessUtilityImage": ["string"],
}
GO_KIND = {
    "driverInfo*": C.POINTER(_abi.DriverInfo), "string": C.c_void_p,
    "descriptors": C.POINTER(_abi.WC_LAYER_DESCRIPTOR), "count": C.c_uint32, "uintptr*": C.POINTER(C.c_uint64),
    "uint16*": C.c_void_p, "uint64": C.c_uint64, "GUID*": C.POINTER(_abi.GUID),
}


def test_vmcompute_layer_exports_match_hcsshims_declarations() -> None:
    assert set(_abi.VMCOMPUTE_LAYERS) == set(VMCOMPUTE_FROM_HCSSHIM)
    for name, (restype, argtypes) in _abi.VMCOMPUTE_LAYERS.items():
        assert restype is C.c_int32, name
        assert argtypes == [GO_KIND[k] for k in VMCOMPUTE_FROM_HCSSHIM[name]], name


@pytest.mark.parametrize("struct, size, offsets", [
    (_abi.HCS_PROCESS_INFORMATION, 32, {"ProcessId": 0, "Reserved": 4, "StdInput": 8, "StdOutput": 16,
                                        "StdError": 24}),
    (_abi.HCS_EVENT, 24, {"Type": 0, "EventData": 8, "Operation": 16}),
    (_abi.GUID, 16, {"Data1": 0, "Data2": 4, "Data3": 6, "Data4": 8}),
    (_abi.WC_LAYER_DESCRIPTOR, 32, {"LayerId": 0, "Flags": 16, "Path": 24}),
    (_abi.DriverInfo, 16, {"Flavour": 0, "HomeDir": 8}),
    (_abi.JOBOBJECT_BASIC_LIMIT_INFORMATION, 64, {"LimitFlags": 16, "Affinity": 48, "SchedulingClass": 60}),
    (_abi.JOBOBJECT_EXTENDED_LIMIT_INFORMATION, 144, {"IoInfo": 64, "ProcessMemoryLimit": 112,
                                                      "JobMemoryLimit": 120, "PeakJobMemoryUsed": 136}),
    (_abi.JOBOBJECT_CPU_RATE_CONTROL_INFORMATION, 8, {"ControlFlags": 0, "Value": 4}),
    (_abi.SERVICE_STATUS, 28, {"dwCurrentState": 4, "dwWaitHint": 24}),
    (_abi.SERVICE_TABLE_ENTRYW, 16, {"lpServiceName": 0, "lpServiceProc": 8}),
    (_abi.JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, 48, {"TotalPageFaultCount": 32, "ActiveProcesses": 40}),
    (_abi.FILE_BASIC_INFO, 40, {"CreationTime": 0, "LastAccessTime": 8, "LastWriteTime": 16, "ChangeTime": 24,
                                "FileAttributes": 32}),
    (_abi.LUID, 8, {"LowPart": 0, "HighPart": 4}),
    (_abi.LUID_AND_ATTRIBUTES, 12, {"Luid": 0, "Attributes": 8}),
    (_abi.TOKEN_PRIVILEGES2, 28, {"PrivilegeCount": 0, "Privileges": 4}),
])
def test_struct_layouts_are_the_x64_windows_ones(struct: Any, size: int, offsets: dict[str, int]) -> None:
    # Sizes and offsets of the x64 (LLP64) layouts in the SDK headers; fixed-width fields make them the same here.
    assert C.sizeof(struct) == size
    assert {name: getattr(struct, name).offset for name in offsets} == offsets


def test_struct_fields_match_the_header_declarations() -> None:
    text = (INCLUDE / "computedefs.h").read_text()
    body = re.search(r"typedef struct \{([^}]*)\}\s*HCS_PROCESS_INFORMATION;", text)
    assert body is not None
    fields = re.findall(r"(\w+)\s+(\w+);", body.group(1))
    assert [(n, c_kind(t)) for t, n in fields] == [
        ("ProcessId", "uint32"), ("Reserved", "uint32"), ("StdInput", "ptr"), ("StdOutput", "ptr"),
        ("StdError", "ptr")]
    assert [f[0] for f in _abi.HCS_PROCESS_INFORMATION._fields_] == [n for _, n in fields]


@pytest.mark.windows_only
def test_the_dlls_export_what_we_bind_on_this_windows_build() -> None:
    from runtime.windows.platform import load_dlls
    dlls = load_dlls()
    assert dlls      # load_dlls binds every table; a missing export raises AttributeError


@pytest.mark.parametrize("header, typedef, struct", [
    ("winbase.h", "FILE_BASIC_INFO", _abi.FILE_BASIC_INFO),
    ("winnt.h", "LUID", _abi.LUID),
    ("winnt.h", "LUID_AND_ATTRIBUTES", _abi.LUID_AND_ATTRIBUTES),
    ("winnt.h", "TOKEN_PRIVILEGES", _abi.TOKEN_PRIVILEGES2),
])
def test_layer_import_structs_declare_the_header_fields_in_order(header: str, typedef: str, struct: Any) -> None:
    body = re.search(r"typedef struct _" + typedef + r" \{([^}]*)\}", (INCLUDE / header).read_text())
    assert body is not None
    fields = re.findall(r"(\w+)\s+(\w+)(?:\[\w+\])?;", body.group(1))
    widths = {"LARGE_INTEGER": C.c_int64, "DWORD": C.c_uint32, "LONG": C.c_int32, "LUID": _abi.LUID,
              "LUID_AND_ATTRIBUTES": _abi.LUID_AND_ATTRIBUTES}
    declared = [(name, widths[ctype]) for ctype, name in fields]
    ours = [(name, t._type_ if issubclass(t, C.Array) else t) for name, t in struct._fields_]   # arrays: element
    assert ours == declared
