"""HCS schema v2 documents as dataclasses.

`to_json()` emits the exact key casing of the official schema (PascalCase,
with the few irregular keys listed in `_KEYS`) and drops empty values the way
hcsshim's Go structs do with `omitempty` (None, False, 0, "", [] and {}), so
a document carries only what we mean. Parsers turn HCS output (Properties,
Statistics, ProcessStatus, SystemExitStatus, ResultError) into dataclasses
and reject malformed input with a message, never a traceback.

Field names and types follow shared/windows/hcs-schema/hcs-schema-21H2.json;
tests/windows/test_schema.py validates every document closed-world against it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

# snake_case field -> schema key, where plain PascalCase would be wrong.
_KEYS = {
    "size_in_mb": "SizeInMB",
    "direct_file_mapping_in_mb": "DirectFileMappingInMB",
    "qos": "QoS",
    "dword_value": "DWordValue",
    "qword_value": "QWordValue",
    "hv_socket_config": "HvSocketConfig",
}


def _key(name: str) -> str:
    return _KEYS.get(name) or "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                               and value == 0) or value in ("", [], {}, ())


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts with schema keys, omitting empty fields; enums -> their value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = to_plain(getattr(value, f.name))
            if f.metadata.get("keep") and v is not None:
                out[_key(f.name)] = v
            elif not _empty(v):
                out[_key(f.name)] = v
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class Doc:
    """Mixin: `to_dict()` / `to_json()` for a schema dataclass."""

    def to_dict(self) -> dict[str, Any]:
        out = to_plain(self)
        assert isinstance(out, dict)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


# ------------------------------------------------------------------ compute systems


@dataclass(frozen=True)
class Version(Doc):
    major: int
    minor: int = 0


SCHEMA_V21 = Version(2, 1)


@dataclass(frozen=True)
class Layer(Doc):
    id: str      # bare GUID, no braces
    path: str    # the layer folder (not its Files\)


@dataclass(frozen=True)
class Storage(Doc):
    layers: tuple[Layer, ...] = ()
    path: str = ""    # the mounted scratch volume, \\?\Volume{GUID}\


@dataclass(frozen=True)
class MappedDirectory(Doc):
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class MappedPipe(Doc):
    container_pipe_name: str
    host_path: str


@dataclass(frozen=True)
class Networking(Doc):
    namespace: str = ""
    dns_search_list: str = ""          # comma-joined
    allow_unqualified_dns_query: bool = False
    network_shared_container_name: str = ""


@dataclass(frozen=True)
class ContainerProcessor(Doc):
    """Count, Maximum and Weight are mutually exclusive (HCS rejects more than one)."""

    count: int = 0
    maximum: int = 0    # percent of all host CPUs x 100, 1..10000
    weight: int = 0     # 0..10000


@dataclass(frozen=True)
class ContainerMemory(Doc):
    size_in_mb: int = 0


class RegistryHive(enum.Enum):
    SYSTEM = "System"
    SOFTWARE = "Software"
    SECURITY = "Security"
    SAM = "Sam"


class RegistryValueType(enum.Enum):
    STRING = "String"
    DWORD = "DWord"
    QWORD = "QWord"


@dataclass(frozen=True)
class RegistryKey(Doc):
    hive: RegistryHive
    name: str
    volatile: bool = False


@dataclass(frozen=True)
class RegistryValue(Doc):
    key: RegistryKey
    name: str
    type: RegistryValueType
    string_value: str = ""
    dword_value: int = 0


@dataclass(frozen=True)
class RegistryChanges(Doc):
    add_values: tuple[RegistryValue, ...] = ()


# servercore honours the graceful-stop window only with this (hcsshim sets it on every container).
WAIT_TO_KILL = RegistryValue(RegistryKey(RegistryHive.SYSTEM, "ControlSet001\\Control"),
                             "WaitToKillServiceTimeout", RegistryValueType.STRING, string_value="2147483647")


@dataclass(frozen=True)
class Device(Doc):
    type: str                     # "ClassGuid" or "DeviceInstance"
    interface_class_guid: str = ""
    location_path: str = ""


@dataclass(frozen=True)
class GuestOs(Doc):
    host_name: str = ""


@dataclass(frozen=True)
class Container(Doc):
    guest_os: GuestOs | None = None
    storage: Storage | None = None
    mapped_directories: tuple[MappedDirectory, ...] = ()
    mapped_pipes: tuple[MappedPipe, ...] = ()
    memory: ContainerMemory | None = None
    processor: ContainerProcessor | None = None
    networking: Networking | None = None
    registry_changes: RegistryChanges | None = None
    assigned_devices: tuple[Device, ...] = ()


@dataclass(frozen=True)
class HostedSystem(Doc):
    schema_version: Version
    container: Container


# -- utility VM (Hyper-V isolation) subset


@dataclass(frozen=True)
class UefiBootEntry(Doc):
    device_type: str
    device_path: str


@dataclass(frozen=True)
class Uefi(Doc):
    boot_this: UefiBootEntry


@dataclass(frozen=True)
class Chipset(Doc):
    uefi: Uefi


@dataclass(frozen=True)
class VmMemory(Doc):
    size_in_mb: int
    allow_overcommit: bool = False


@dataclass(frozen=True)
class VmProcessor(Doc):
    count: int


@dataclass(frozen=True)
class Topology(Doc):
    memory: VmMemory
    processor: VmProcessor


@dataclass(frozen=True)
class Attachment(Doc):
    type: str    # "VirtualDisk"
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Scsi(Doc):
    attachments: dict[str, Attachment] = field(default_factory=dict)


@dataclass(frozen=True)
class HvSocketSystemConfig(Doc):
    default_bind_security_descriptor: str = ""


@dataclass(frozen=True)
class VmHvSocket(Doc):
    hv_socket_config: HvSocketSystemConfig


@dataclass(frozen=True)
class VirtualSmbShareOptions(Doc):
    read_only: bool = False
    share_read: bool = False
    cache_io: bool = False
    take_backup_privilege: bool = False


@dataclass(frozen=True)
class VirtualSmbShare(Doc):
    name: str
    path: str
    options: VirtualSmbShareOptions | None = None


@dataclass(frozen=True)
class VirtualSmb(Doc):
    shares: tuple[VirtualSmbShare, ...] = ()
    direct_file_mapping_in_mb: int = 0


@dataclass(frozen=True)
class Devices(Doc):
    scsi: dict[str, Scsi] = field(default_factory=dict)
    hv_socket: VmHvSocket | None = None
    virtual_smb: VirtualSmb | None = None


@dataclass(frozen=True)
class GuestConnection(Doc):
    use_host_time_zone: bool = False


@dataclass(frozen=True)
class VirtualMachine(Doc):
    chipset: Chipset
    compute_topology: Topology
    devices: Devices
    stop_on_reset: bool = True
    # An empty GuestConnection asks HCS to connect to the guest; it must be sent even when empty.
    guest_connection: GuestConnection | None = field(default_factory=GuestConnection, metadata={"keep": True})


@dataclass(frozen=True)
class ComputeSystem(Doc):
    owner: str
    schema_version: Version = SCHEMA_V21
    container: Container | None = None
    virtual_machine: VirtualMachine | None = None
    hosting_system_id: str = ""
    hosted_system: HostedSystem | None = None
    should_terminate_on_last_handle_closed: bool = False


# ------------------------------------------------------------------ processes and requests


@dataclass(frozen=True)
class ProcessParameters(Doc):
    command_line: str
    working_directory: str = ""
    user: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    emulate_console: bool = False
    create_std_in_pipe: bool = False
    create_std_out_pipe: bool = False
    create_std_err_pipe: bool = False
    console_size: tuple[int, ...] = ()   # [height, width]


class Signal(enum.Enum):
    CTRL_C = "CtrlC"
    CTRL_BREAK = "CtrlBreak"
    CTRL_CLOSE = "CtrlClose"
    CTRL_LOGOFF = "CtrlLogOff"
    CTRL_SHUTDOWN = "CtrlShutdown"


@dataclass(frozen=True)
class SignalProcessOptions(Doc):
    signal: Signal


@dataclass(frozen=True)
class ConsoleSize(Doc):
    height: int
    width: int


@dataclass(frozen=True)
class CloseHandle(Doc):
    handle: str    # "StdIn", "StdOut", "StdErr", "All"


@dataclass(frozen=True)
class ProcessModifyRequest(Doc):
    operation: str    # "ConsoleSize" or "CloseHandle"
    console_size: ConsoleSize | None = None
    close_handle: CloseHandle | None = None


def close_stdin_request() -> ProcessModifyRequest:
    return ProcessModifyRequest("CloseHandle", close_handle=CloseHandle("StdIn"))


def resize_request(width: int, height: int) -> ProcessModifyRequest:
    return ProcessModifyRequest("ConsoleSize", console_size=ConsoleSize(height, width))


@dataclass(frozen=True)
class PropertyQuery(Doc):
    property_types: tuple[str, ...] = ()


STATISTICS_QUERY = PropertyQuery(("Statistics",))


class RequestType(enum.Enum):
    ADD = "Add"
    REMOVE = "Remove"
    UPDATE = "Update"


@dataclass(frozen=True)
class ModifySettingRequest(Doc):
    resource_path: str
    request_type: RequestType
    settings: Any = None


def memory_update(size_in_mb: int) -> ModifySettingRequest:
    # HCS takes a bare integer here although the schema types Settings as an object (known deviation).
    return ModifySettingRequest("Container/Memory/SizeInMB", RequestType.UPDATE, size_in_mb)


def processor_update(processor: ContainerProcessor) -> ModifySettingRequest:
    return ModifySettingRequest("Container/Processor", RequestType.UPDATE, processor)


@dataclass(frozen=True)
class LayerData(Doc):
    layers: tuple[Layer, ...]
    schema_version: Version = SCHEMA_V21


# ------------------------------------------------------------------ parsers


class SchemaError(ValueError):
    """HCS returned a document we cannot read."""


def _object(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SchemaError(f"{what}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise SchemaError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _int(d: dict[str, Any], key: str, what: str, default: int = 0) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(f"{what}.{key}: expected an integer, got {v!r}")
    return v


@dataclass(frozen=True)
class ProcessStatus:
    process_id: int
    exited: bool
    exit_code: int
    last_wait_result: int = 0


def parse_process_status(text: str | None) -> ProcessStatus:
    d = _object(text, "ProcessStatus")
    return ProcessStatus(_int(d, "ProcessId", "ProcessStatus"), bool(d.get("Exited", False)),
                         _int(d, "ExitCode", "ProcessStatus") & 0xFFFFFFFF,
                         _int(d, "LastWaitResult", "ProcessStatus"))


@dataclass(frozen=True)
class SystemExitStatus:
    status: int
    exit_type: str


def parse_system_exit_status(text: str | None) -> SystemExitStatus:
    d = _object(text, "SystemExitStatus")
    return SystemExitStatus(_int(d, "Status", "SystemExitStatus") & 0xFFFFFFFF, str(d.get("ExitType", "")))


@dataclass(frozen=True)
class ResultError:
    error: int
    message: str
    events: tuple[str, ...] = ()


def parse_result_error(text: str | None) -> ResultError:
    d = _object(text, "ResultError")
    events = tuple(str(e.get("Message", "")) for e in d.get("ErrorEvents", []) or [] if isinstance(e, dict))
    return ResultError(_int(d, "Error", "ResultError") & 0xFFFFFFFF, str(d.get("ErrorMessage", "")), events)


@dataclass(frozen=True)
class Statistics:
    uptime_100ns: int = 0
    cpu_total_100ns: int = 0
    cpu_user_100ns: int = 0
    cpu_kernel_100ns: int = 0
    memory_commit_bytes: int = 0
    memory_commit_peak_bytes: int = 0
    memory_private_working_set_bytes: int = 0
    storage_read_bytes: int = 0
    storage_write_bytes: int = 0


def parse_statistics(d: dict[str, Any]) -> Statistics:
    def sub(name: str) -> dict[str, Any]:
        v = d.get(name) or {}
        if not isinstance(v, dict):
            raise SchemaError(f"Statistics.{name}: expected an object")
        return v
    p, m, s = sub("Processor"), sub("Memory"), sub("Storage")
    return Statistics(
        uptime_100ns=_int(d, "Uptime100ns", "Statistics"),
        cpu_total_100ns=_int(p, "TotalRuntime100ns", "Statistics.Processor"),
        cpu_user_100ns=_int(p, "RuntimeUser100ns", "Statistics.Processor"),
        cpu_kernel_100ns=_int(p, "RuntimeKernel100ns", "Statistics.Processor"),
        memory_commit_bytes=_int(m, "MemoryUsageCommitBytes", "Statistics.Memory"),
        memory_commit_peak_bytes=_int(m, "MemoryUsageCommitPeakBytes", "Statistics.Memory"),
        memory_private_working_set_bytes=_int(m, "MemoryUsagePrivateWorkingSetBytes", "Statistics.Memory"),
        storage_read_bytes=_int(s, "ReadSizeBytes", "Statistics.Storage"),
        storage_write_bytes=_int(s, "WriteSizeBytes", "Statistics.Storage"),
    )


@dataclass(frozen=True)
class Properties:
    id: str = ""
    system_type: str = ""
    runtime_os_type: str = ""
    owner: str = ""
    state: str = ""
    stopped: bool = False
    statistics: Statistics | None = None
    process_ids: tuple[int, ...] = ()


def parse_properties(text: str | None) -> Properties:
    d = _object(text, "Properties")
    stats = d.get("Statistics")
    if stats is not None and not isinstance(stats, dict):
        raise SchemaError("Properties.Statistics: expected an object")
    pids = tuple(int(p["ProcessId"]) for p in d.get("ProcessList", []) or []
                 if isinstance(p, dict) and isinstance(p.get("ProcessId"), int))
    return Properties(str(d.get("Id", "")), str(d.get("SystemType", "")), str(d.get("RuntimeOsType", "")),
                      str(d.get("Owner", "")), str(d.get("State", "")), bool(d.get("Stopped", False)),
                      parse_statistics(stats) if stats is not None else None, pids)


@dataclass(frozen=True)
class SystemSummary:
    id: str
    owner: str
    state: str
    system_type: str


def parse_enumeration(text: str | None) -> list[SystemSummary]:
    """HcsEnumerateComputeSystems result: a JSON array of Properties-like objects."""
    if not text:
        return []
    try:
        items = json.loads(text)
    except ValueError as e:
        raise SchemaError(f"enumeration: not JSON: {e}") from None
    if not isinstance(items, list):
        raise SchemaError("enumeration: expected a JSON array")
    return [SystemSummary(str(i.get("Id", "")), str(i.get("Owner", "")), str(i.get("State", "")),
                          str(i.get("SystemType", ""))) for i in items if isinstance(i, dict)]
