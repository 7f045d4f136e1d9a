"""HCS schema v2 documents as dataclasses, and parsers for what HCS returns.

Field names are snake_case; `to_json()` emits the exact HCS key (PascalCase by
rule, or the `key=` override where HCS spells it irregularly, e.g. `SizeInMB`).
Omission follows Go's `omitempty` as hcsshim sends documents: None, 0, False,
"" and empty lists/maps are dropped, while a present nested object is always
emitted (even `{}`, which HCS reads as "enable with defaults", e.g.
`GuestConnection`). Keys come only from the official schema definitions named
in each class docstring; tests/windows validates every document closed-world
against the 1809 and 21H2 schemas.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- emitting


def hcs_key(name: str) -> Any:
    """A field whose HCS key is not the PascalCase of its Python name."""
    return field(default=None, metadata={"key": name})


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _empty(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return True
    return isinstance(value, (str, list, tuple, dict)) and len(value) == 0


def to_json(value: Any) -> Any:
    """A schema dataclass (or a value inside one) as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if _empty(v) and not dataclasses.is_dataclass(v):
                continue
            out[f.metadata.get("key", _pascal(f.name))] = to_json(v)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- enums


class RegistryHive(enum.Enum):
    SYSTEM = "System"
    SOFTWARE = "Software"
    SECURITY = "Security"
    SAM = "Sam"


class RegistryValueType(enum.Enum):
    STRING = "String"
    EXPANDED_STRING = "ExpandedString"
    DWORD = "DWord"
    QWORD = "QWord"


class RequestType(enum.Enum):
    ADD = "Add"
    REMOVE = "Remove"
    UPDATE = "Update"


class ProcessSignal(enum.Enum):
    CTRL_C = "CtrlC"
    CTRL_BREAK = "CtrlBreak"
    CTRL_CLOSE = "CtrlClose"
    CTRL_LOGOFF = "CtrlLogOff"
    CTRL_SHUTDOWN = "CtrlShutdown"


class StdHandle(enum.Enum):
    STDIN = "StdIn"
    STDOUT = "StdOut"
    STDERR = "StdErr"
    ALL = "All"


class DeviceType(enum.Enum):
    CLASS_GUID = "ClassGuid"
    DEVICE_INSTANCE = "DeviceInstance"


class PropertyType(enum.Enum):
    MEMORY = "Memory"
    STATISTICS = "Statistics"
    PROCESS_LIST = "ProcessList"


# ---------------------------------------------------------------- containers


@dataclass(frozen=True)
class Version:
    """`Version`."""

    major: int
    minor: int = 0


SCHEMA_V21 = Version(2, 1)


@dataclass(frozen=True)
class Layer:
    """`Layer`: a read-only parent; `id` is a bare GUID (NameToGuid of the folder name)."""

    id: str
    path: str


@dataclass(frozen=True)
class StorageQoS:
    """`StorageQoS`."""

    iops_maximum: int = 0
    bandwidth_maximum: int = 0


@dataclass(frozen=True)
class Storage:
    """`Storage`: `path` is the mounted scratch volume `\\\\?\\Volume{GUID}\\` (or a guest path when hosted)."""

    layers: tuple[Layer, ...]
    path: str
    qo_s: StorageQoS | None = hcs_key("QoS")


@dataclass(frozen=True)
class MappedDirectory:
    """`MappedDirectory`."""

    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class MappedPipe:
    """`MappedPipe`: `container_pipe_name` is the bare name inside `\\\\.\\pipe\\`."""

    container_pipe_name: str
    host_path: str


@dataclass(frozen=True)
class Networking:
    """`Networking`: `dns_search_list` is one comma-joined string in HCS."""

    namespace: str = ""
    dns_search_list: str = ""
    allow_unqualified_dns_query: bool = False


@dataclass(frozen=True)
class ContainerProcessor:
    """`Container_Processor` (`Processor` before 2104): Count, Maximum and Weight are mutually exclusive."""

    count: int = 0
    maximum: int = 0
    weight: int = 0

    def __post_init__(self) -> None:
        if sum(1 for v in (self.count, self.maximum, self.weight) if v) > 1:
            raise ValueError("Processor: Count, Maximum and Weight are mutually exclusive")


@dataclass(frozen=True)
class ContainerMemory:
    """`Container_Memory` (`Memory` before 2104)."""

    size_in_mb: int = hcs_key("SizeInMB")


@dataclass(frozen=True)
class RegistryKey:
    """`RegistryKey`."""

    hive: RegistryHive
    name: str


@dataclass(frozen=True)
class RegistryValue:
    """`RegistryValue`: exactly one of the typed values is set."""

    key: RegistryKey
    name: str
    type: RegistryValueType
    string_value: str = ""
    d_word_value: int = hcs_key("DWordValue")


@dataclass(frozen=True)
class RegistryChanges:
    """`RegistryChanges`."""

    add_values: tuple[RegistryValue, ...] = ()


@dataclass(frozen=True)
class GuestOs:
    """`GuestOs`."""

    host_name: str = ""


@dataclass(frozen=True)
class Device:
    """`Device` in `Container.AssignedDevices`."""

    type: DeviceType
    interface_class_guid: str = ""
    location_path: str = ""


@dataclass(frozen=True)
class Container:
    """`Container`."""

    storage: Storage
    guest_os: GuestOs | None = None
    mapped_directories: tuple[MappedDirectory, ...] = ()
    mapped_pipes: tuple[MappedPipe, ...] = ()
    memory: ContainerMemory | None = None
    processor: ContainerProcessor | None = None
    networking: Networking | None = None
    registry_changes: RegistryChanges | None = None
    assigned_devices: tuple[Device, ...] = ()


@dataclass(frozen=True)
class HostedSystem:
    """`HostedSystem`: a container inside a utility VM (Hyper-V isolation)."""

    container: Container
    schema_version: Version = SCHEMA_V21


# ---------------------------------------------------------------- utility VM (a subset)


@dataclass(frozen=True)
class UefiBootEntry:
    """`UefiBootEntry`."""

    device_type: str            # UefiBootDevice: "VmbFs" for a WCOW utility VM
    device_path: str


@dataclass(frozen=True)
class Uefi:
    """`Uefi`."""

    boot_this: UefiBootEntry


@dataclass(frozen=True)
class Chipset:
    """`Chipset`."""

    uefi: Uefi


@dataclass(frozen=True)
class VmMemory:
    """`VirtualMachine_Memory`."""

    size_in_mb: int = hcs_key("SizeInMB")
    allow_overcommit: bool = False


@dataclass(frozen=True)
class VmProcessor:
    """`VirtualMachine_Processor`."""

    count: int = 0
    limit: int = 0
    weight: int = 0


@dataclass(frozen=True)
class Topology:
    """`Topology`."""

    memory: VmMemory
    processor: VmProcessor


@dataclass(frozen=True)
class Attachment:
    """`Attachment` on a SCSI controller."""

    type: str                   # AttachmentType: "VirtualDisk"
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Scsi:
    """`Scsi`: LUN number (as a string key) -> attachment."""

    attachments: Mapping[str, Attachment] = field(default_factory=dict)


@dataclass(frozen=True)
class HvSocketSystemConfig:
    """`HvSocketSystemConfig`."""

    default_bind_security_descriptor: str = ""
    default_connect_security_descriptor: str = ""


@dataclass(frozen=True)
class VmHvSocket:
    """`VirtualMachine_HvSocket`."""

    hv_socket_config: HvSocketSystemConfig


@dataclass(frozen=True)
class VirtualSmbShareOptions:
    """`VirtualSmbShareOptions`."""

    read_only: bool = False
    share_read: bool = False
    cache_io: bool = False
    take_backup_privilege: bool = False


@dataclass(frozen=True)
class VirtualSmbShare:
    """`VirtualSmbShare`."""

    name: str
    path: str
    options: VirtualSmbShareOptions


@dataclass(frozen=True)
class VirtualSmb:
    """`VirtualSmb`."""

    shares: tuple[VirtualSmbShare, ...] = ()
    direct_file_mapping_in_mb: int = hcs_key("DirectFileMappingInMB")


@dataclass(frozen=True)
class NetworkAdapter:
    """`NetworkAdapter`."""

    endpoint_id: str
    mac_address: str = ""


@dataclass(frozen=True)
class Devices:
    """`Devices`."""

    scsi: Mapping[str, Scsi] = field(default_factory=dict)
    hv_socket: VmHvSocket | None = None
    virtual_smb: VirtualSmb | None = None
    network_adapters: Mapping[str, NetworkAdapter] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestConnection:
    """`GuestConnection`: present and empty = HCS connects to the guest compute service."""


@dataclass(frozen=True)
class VirtualMachine:
    """`VirtualMachine` (the subset a WCOW utility VM needs)."""

    chipset: Chipset
    compute_topology: Topology
    devices: Devices
    stop_on_reset: bool = False
    guest_connection: GuestConnection | None = None


# ---------------------------------------------------------------- top-level documents


@dataclass(frozen=True)
class ComputeSystem:
    """`ComputeSystem`: exactly one of container, virtual_machine or hosted_system."""

    owner: str
    schema_version: Version = SCHEMA_V21
    container: Container | None = None
    virtual_machine: VirtualMachine | None = None
    hosting_system_id: str = ""
    hosted_system: HostedSystem | None = None
    should_terminate_on_last_handle_closed: bool = False

    def __post_init__(self) -> None:
        kinds = [x for x in (self.container, self.virtual_machine, self.hosted_system) if x is not None]
        if len(kinds) != 1:
            raise ValueError("ComputeSystem: exactly one of Container, VirtualMachine, HostedSystem")
        if (self.hosted_system is None) != (not self.hosting_system_id):
            raise ValueError("ComputeSystem: HostedSystem and HostingSystemId go together")


@dataclass(frozen=True)
class ProcessParameters:
    """`ProcessParameters` for HcsCreateProcess. `console_size` is (height, width)."""

    command_line: str
    working_directory: str = ""
    user: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    emulate_console: bool = False
    create_std_in_pipe: bool = False
    create_std_out_pipe: bool = False
    create_std_err_pipe: bool = False
    console_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PropertyQuery:
    """`System_PropertyQuery`."""

    property_types: tuple[PropertyType, ...] = ()


@dataclass(frozen=True)
class ModifySettingRequest:
    """`ModifySettingRequest`. `settings` is free-form (a bare integer for Container/Memory/SizeInMB)."""

    resource_path: str
    request_type: RequestType
    settings: Any = None


@dataclass(frozen=True)
class ConsoleSize:
    """`ConsoleSize`."""

    height: int
    width: int


@dataclass(frozen=True)
class CloseHandle:
    """`CloseHandle`."""

    handle: StdHandle


@dataclass(frozen=True)
class ProcessModifyRequest:
    """`ProcessModifyRequest`: operation is "ConsoleSize" or "CloseHandle"."""

    operation: str
    console_size: ConsoleSize | None = None
    close_handle: CloseHandle | None = None

    @staticmethod
    def resize(height: int, width: int) -> ProcessModifyRequest:
        return ProcessModifyRequest("ConsoleSize", console_size=ConsoleSize(height, width))

    @staticmethod
    def close_stdin() -> ProcessModifyRequest:
        return ProcessModifyRequest("CloseHandle", close_handle=CloseHandle(StdHandle.STDIN))


@dataclass(frozen=True)
class SignalProcessOptions:
    """`SignalProcessOptions`."""

    signal: ProcessSignal


@dataclass(frozen=True)
class LayerData:
    """`LayerData` for the documented computestorage layer calls (topmost layer first)."""

    layers: tuple[Layer, ...]
    schema_version: Version = SCHEMA_V21


# ---------------------------------------------------------------- parsing results


def _get(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is int:
        raise ValueError(f"{name}: expected an integer, got a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"{name}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _object(doc: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


@dataclass(frozen=True)
class ProcessStatus:
    """`ProcessStatus` from HcsWaitForProcessExit / the ProcessExited event."""

    process_id: int
    exited: bool
    exit_code: int              # uint32 as Windows reports it (e.g. 0xC000013A)
    last_wait_result: int

    @staticmethod
    def parse(doc: Any) -> ProcessStatus:
        d = _object(doc, "ProcessStatus")
        return ProcessStatus(_get(d, "ProcessId", int, 0), _get(d, "Exited", bool, False),
                             _get(d, "ExitCode", int, 0) & 0xFFFFFFFF, _get(d, "LastWaitResult", int, 0))


@dataclass(frozen=True)
class SystemExitStatus:
    """`SystemExitStatus` from HcsWaitForComputeSystemExit / the SystemExited event."""

    status: int                 # HRESULT
    exit_type: str              # "GracefulExit", "ForcedExit", "UnexpectedExit", ...

    @staticmethod
    def parse(doc: Any) -> SystemExitStatus:
        d = _object(doc, "SystemExitStatus")
        return SystemExitStatus(_get(d, "Status", int, 0) & 0xFFFFFFFF, _get(d, "ExitType", str, ""))


@dataclass(frozen=True)
class ResultError:
    """`ResultError`: the document a failed HCS operation may return."""

    error: int
    message: str
    events: tuple[str, ...] = ()

    @staticmethod
    def parse(doc: Any) -> ResultError:
        d = _object(doc, "ResultError")
        events = _get(d, "ErrorEvents", list, [])
        messages = tuple(str(e.get("Message", "")) for e in events if isinstance(e, Mapping) and e.get("Message"))
        return ResultError(_get(d, "Error", int, 0) & 0xFFFFFFFF, _get(d, "ErrorMessage", str, ""), messages)


@dataclass(frozen=True)
class Statistics:
    """`Statistics`: CPU in 100 ns units, memory in bytes."""

    timestamp: str = ""
    uptime_100ns: int = 0
    total_runtime_100ns: int = 0
    runtime_user_100ns: int = 0
    runtime_kernel_100ns: int = 0
    memory_commit_bytes: int = 0
    memory_commit_peak_bytes: int = 0
    memory_private_working_set_bytes: int = 0
    storage_read_bytes: int = 0
    storage_write_bytes: int = 0

    @staticmethod
    def parse(doc: Any) -> Statistics:
        d = _object(doc, "Statistics")
        cpu = _object(_get(d, "Processor", dict, {}), "Statistics.Processor")
        mem = _object(_get(d, "Memory", dict, {}), "Statistics.Memory")
        sto = _object(_get(d, "Storage", dict, {}), "Statistics.Storage")
        return Statistics(
            timestamp=_get(d, "Timestamp", str, ""),
            uptime_100ns=_get(d, "Uptime100ns", int, 0),
            total_runtime_100ns=_get(cpu, "TotalRuntime100ns", int, 0),
            runtime_user_100ns=_get(cpu, "RuntimeUser100ns", int, 0),
            runtime_kernel_100ns=_get(cpu, "RuntimeKernel100ns", int, 0),
            memory_commit_bytes=_get(mem, "MemoryUsageCommitBytes", int, 0),
            memory_commit_peak_bytes=_get(mem, "MemoryUsageCommitPeakBytes", int, 0),
            memory_private_working_set_bytes=_get(mem, "MemoryUsagePrivateWorkingSetBytes", int, 0),
            storage_read_bytes=_get(sto, "ReadSizeBytes", int, 0),
            storage_write_bytes=_get(sto, "WriteSizeBytes", int, 0),
        )


@dataclass(frozen=True)
class Properties:
    """`Properties` from HcsGetComputeSystemProperties (the fields cri-shim reads)."""

    id: str = ""
    system_type: str = ""
    runtime_os_type: str = ""
    owner: str = ""
    state: str = ""
    stopped: bool = False
    exit_type: str = ""
    statistics: Statistics | None = None
    process_ids: tuple[int, ...] = ()

    @staticmethod
    def parse(doc: Any) -> Properties:
        d = _object(doc, "Properties")
        stats = d.get("Statistics")
        plist = _get(d, "ProcessList", list, [])
        return Properties(
            id=_get(d, "Id", str, ""), system_type=_get(d, "SystemType", str, ""),
            runtime_os_type=_get(d, "RuntimeOsType", str, ""), owner=_get(d, "Owner", str, ""),
            state=_get(d, "State", str, ""), stopped=_get(d, "Stopped", bool, False),
            exit_type=_get(d, "ExitType", str, ""),
            statistics=Statistics.parse(stats) if stats is not None else None,
            process_ids=tuple(int(p["ProcessId"]) for p in plist
                              if isinstance(p, Mapping) and isinstance(p.get("ProcessId"), int)),
        )


def parse_system_list(doc: Any) -> list[Properties]:
    """The result of HcsEnumerateComputeSystems: a JSON array of `Properties`."""
    if not isinstance(doc, list):
        raise ValueError(f"HcsEnumerateComputeSystems: expected a JSON array, got {type(doc).__name__}")
    return [Properties.parse(item) for item in doc]
