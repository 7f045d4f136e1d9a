"""OCI runtime spec (Windows flavour) -> HCS documents. Pure: no I/O, no DLLs.

The daemon writes `config.json` for every container (runtime.oci); on Windows
its `windows` object carries resources, network and devices, `process` carries
args or commandLine, user.username, env and cwd. This module checks every
field it uses and builds the HCS `ComputeSystem` for a process-isolated or a
Hyper-V hosted container, the `ProcessParameters` of its processes, and the
modify requests of UpdateContainerResources. A bad field raises InvalidSpec
naming it (as `config.json` path, e.g. `windows.resources.cpu.maximum`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from runtime.base import InvalidSpec, Unsupported
from runtime.windows import schema as S
from runtime.windows.cmdline import join_args

GUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
# An absolute Windows path with a drive letter and at least one component below the root.
CONTAINER_PATH_RE = re.compile(r"^[A-Za-z]:\\[^\\/:*?\"<>|]")
HOST_PATH_RE = re.compile(r"^([A-Za-z]:\\|\\\\)")
PIPE_PREFIX = "\\\\.\\pipe\\"
CPU_MAXIMUM_MAX = 10_000       # percent x 100 of all host processors
CPU_WEIGHT_MAX = 10_000
MIB = 1 << 20

# hcsshim sets this on every process-isolated container so servercore waits for
# CtrlShutdown handlers for the whole grace period instead of its own 5 s default.
WAIT_TO_KILL = S.RegistryValue(
    key=S.RegistryKey(S.RegistryHive.SYSTEM, "ControlSet001\\Control"),
    name="WaitToKillServiceTimeout", type=S.RegistryValueType.STRING, string_value=str(2**31 - 1))


@dataclass(frozen=True)
class MountedLayers:
    """What the layer mounter produced for one container."""

    parents: tuple[S.Layer, ...]   # immediate parent first, base layer last (HCS order)
    volume: str                    # "\\?\Volume{GUID}\" of the mounted scratch


@dataclass(frozen=True)
class HostInfo:
    logical_processors: int


# ---------------------------------------------------------------- small validators


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(where, f"must be an object, not {type(value).__name__}")
    return value


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(where, f"must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise InvalidSpec(where, f"{value} is out of range [{lo}, {hi}]")
    return value


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidSpec(where, f"must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidSpec(where, "must not contain a NUL character")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidSpec(where, f"must be a list of strings, not {type(value).__name__}")
    return [_str(v, f"{where}[{i}]") for i, v in enumerate(value)]


# ---------------------------------------------------------------- processes


def environment(env: Sequence[str], where: str = "process.env") -> dict[str, str]:
    """`["K=V", ...]` -> map. Later entries win; names compare case-insensitively as on Windows."""
    out: dict[str, str] = {}
    canonical: dict[str, str] = {}
    for i, item in enumerate(env):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidSpec(f"{where}[{i}]", f"{item!r} is not NAME=VALUE")
        previous = canonical.get(name.upper())
        if previous is not None:
            del out[previous]
        canonical[name.upper()] = name
        out[name] = value
    return out


def command_line(process: Mapping[str, Any], where: str = "process") -> str:
    """`commandLine` verbatim if given (image ArgsEscaped), else the args joined with Windows quoting."""
    line = _str(process.get("commandLine"), f"{where}.commandLine")
    if line:
        return line
    args = _str_list(process.get("args"), f"{where}.args")
    if not args:
        raise InvalidSpec(f"{where}.args", "no command: set args (or commandLine)")
    return join_args(args)


def process_parameters(process: Mapping[str, Any], *, stdin: bool, where: str = "process") -> S.ProcessParameters:
    """ProcessParameters for the container's init process or an exec (same shape)."""
    process = _obj(process, where)
    tty = process.get("terminal", False)
    if not isinstance(tty, bool):
        raise InvalidSpec(f"{where}.terminal", "must be a boolean")
    user = _obj(process.get("user"), f"{where}.user")
    size = _obj(process.get("consoleSize"), f"{where}.consoleSize")
    console = None
    if tty and size:
        console = (_int(size.get("height"), f"{where}.consoleSize.height", 0, 0xFFFF),
                   _int(size.get("width"), f"{where}.consoleSize.width", 0, 0xFFFF))
    return S.ProcessParameters(
        command_line=command_line(process, where),
        working_directory=_str(process.get("cwd"), f"{where}.cwd") or "C:\\",
        user=_str(user.get("username"), f"{where}.user.username"),
        environment=environment(_str_list(process.get("env"), f"{where}.env"), f"{where}.env"),
        emulate_console=tty,
        create_std_in_pipe=stdin,
        create_std_out_pipe=True,
        # With a console HCS merges stderr into stdout and ignores this flag.
        create_std_err_pipe=not tty,
        console_size=console,
    )


# ---------------------------------------------------------------- resources


def processor(resources: Mapping[str, Any], host: HostInfo, where: str) -> S.ContainerProcessor | None:
    cpu = _obj(resources.get("cpu"), f"{where}.cpu")
    count = _int(cpu.get("count"), f"{where}.cpu.count", 0, 2**32 - 1)
    maximum = _int(cpu.get("maximum"), f"{where}.cpu.maximum", 0, CPU_MAXIMUM_MAX)
    weight = _int(cpu.get("shares"), f"{where}.cpu.shares", 0, CPU_WEIGHT_MAX)
    if "affinity" in cpu and cpu["affinity"]:
        raise Unsupported(f"{where}.cpu.affinity: CPU affinity needs the silo job object; not supported yet")
    chosen = [n for n, v in (("count", count), ("maximum", maximum), ("shares", weight)) if v]
    if len(chosen) > 1:
        raise InvalidSpec(f"{where}.cpu", f"{' and '.join(chosen)} are mutually exclusive on Windows; set one")
    if not chosen:
        return None
    # More processors than the host has is not an error for kubelet; HCS wants it clamped.
    return S.ContainerProcessor(count=min(count, host.logical_processors), maximum=maximum, weight=weight)


def memory(resources: Mapping[str, Any], where: str) -> S.ContainerMemory | None:
    mem = _obj(resources.get("memory"), f"{where}.memory")
    limit = _int(mem.get("limit"), f"{where}.memory.limit", 0, 2**63 - 1)
    if not limit:
        return None
    if limit < MIB:
        raise InvalidSpec(f"{where}.memory.limit", f"{limit} bytes is below the 1 MiB granularity of HCS")
    return S.ContainerMemory(size_in_mb=limit // MIB)


def update_requests(resources: Mapping[str, Any], host: HostInfo,
                    where: str = "windows.resources") -> list[S.ModifySettingRequest]:
    """HcsModifyComputeSystem requests for UpdateContainerResources."""
    resources = _obj(resources, where)
    out: list[S.ModifySettingRequest] = []
    mem = memory(resources, where)
    if mem is not None:
        # hcsshim rounds an update up to an even number of MiB (HCS rejects odd sizes on update).
        size = mem.size_in_mb + (mem.size_in_mb % 2)
        out.append(S.ModifySettingRequest("Container/Memory/SizeInMB", S.RequestType.UPDATE, size))
    cpu = processor(resources, host, where)
    if cpu is not None:
        out.append(S.ModifySettingRequest("Container/Processor", S.RequestType.UPDATE, S.to_json(cpu)))
    return out


# ---------------------------------------------------------------- mounts and devices


def windows_path(path: str, where: str) -> str:
    if not CONTAINER_PATH_RE.match(path):
        raise InvalidSpec(where, f"{path!r} is not an absolute Windows path below a drive root (C:\\dir)")
    return path.rstrip("\\")


def mounts(items: Any, resolve: Callable[[str], str]) -> tuple[tuple[S.MappedDirectory, ...], tuple[S.MappedPipe, ...]]:
    """OCI mounts -> mapped directories and named pipes. `resolve` follows host symlinks (HCS cannot)."""
    if items is None:
        return (), ()
    if not isinstance(items, list):
        raise InvalidSpec("mounts", "must be a list")
    dirs: list[S.MappedDirectory] = []
    pipes: list[S.MappedPipe] = []
    seen: set[str] = set()
    for i, raw in enumerate(items):
        where = f"mounts[{i}]"
        m = _obj(raw, where)
        source = _str(m.get("source"), f"{where}.source")
        dest = _str(m.get("destination"), f"{where}.destination")
        options = _str_list(m.get("options"), f"{where}.options")
        mtype = _str(m.get("type"), f"{where}.type")
        if mtype not in ("", "bind"):
            raise InvalidSpec(f"{where}.type", f"{mtype!r}: Windows containers only bind host paths")
        if source.lower().startswith(PIPE_PREFIX):
            if not dest.lower().startswith(PIPE_PREFIX) or len(dest) == len(PIPE_PREFIX):
                raise InvalidSpec(f"{where}.destination", f"a named pipe maps to {PIPE_PREFIX}<name>, not {dest!r}")
            pipes.append(S.MappedPipe(container_pipe_name=dest[len(PIPE_PREFIX):], host_path=source))
            continue
        if not HOST_PATH_RE.match(source):
            raise InvalidSpec(f"{where}.source", f"{source!r} is not an absolute Windows host path")
        container_path = windows_path(dest, f"{where}.destination")
        if container_path.lower() in seen:
            raise InvalidSpec(f"{where}.destination", f"{dest!r} is mounted twice")
        seen.add(container_path.lower())
        dirs.append(S.MappedDirectory(host_path=resolve(source), container_path=container_path,
                                      read_only="ro" in options))
    return tuple(dirs), tuple(pipes)


def devices(items: Any) -> tuple[S.Device, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise InvalidSpec("windows.devices", "must be a list")
    out = []
    for i, raw in enumerate(items):
        where = f"windows.devices[{i}]"
        d = _obj(raw, where)
        dev_id = _str(d.get("id"), f"{where}.id")
        kind = _str(d.get("idType"), f"{where}.idType")
        if kind == "class":
            if not GUID_RE.match(dev_id):
                raise InvalidSpec(f"{where}.id", f"{dev_id!r} is not an interface class GUID")
            out.append(S.Device(S.DeviceType.CLASS_GUID, interface_class_guid=dev_id))
        elif kind == "vpci-location-path":
            if not dev_id:
                raise InvalidSpec(f"{where}.id", "empty location path")
            out.append(S.Device(S.DeviceType.DEVICE_INSTANCE, location_path=dev_id))
        else:
            raise Unsupported(f"{where}.idType: {kind!r} devices are not supported (use class or vpci-location-path)")
    return tuple(out)


def networking(windows: Mapping[str, Any]) -> S.Networking | None:
    net = _obj(windows.get("network"), "windows.network")
    namespace = _str(net.get("networkNamespace"), "windows.network.networkNamespace")
    if namespace and not GUID_RE.match(namespace):
        raise InvalidSpec("windows.network.networkNamespace", f"{namespace!r} is not an HCN namespace GUID")
    search = _str_list(net.get("DNSSearchList"), "windows.network.DNSSearchList")
    unqualified = net.get("allowUnqualifiedDNSQuery", False)
    if not isinstance(unqualified, bool):
        raise InvalidSpec("windows.network.allowUnqualifiedDNSQuery", "must be a boolean")
    if not (namespace or search or unqualified):
        return None
    return S.Networking(namespace=namespace, dns_search_list=",".join(search), allow_unqualified_dns_query=unqualified)


# ---------------------------------------------------------------- compute systems


def container_document(spec: Mapping[str, Any], layers: MountedLayers, host: HostInfo, *, owner: str,
                       resolve: Callable[[str], str] = lambda p: p) -> S.ComputeSystem:
    """The ComputeSystem of a process-isolated container (§2.2 of the Windows brief)."""
    return S.ComputeSystem(owner=owner, container=_container(spec, layers.parents, layers.volume, host, resolve))


def _container(spec: Mapping[str, Any], parents: tuple[S.Layer, ...], storage_path: str, host: HostInfo,
               resolve: Callable[[str], str]) -> S.Container:
    windows = _obj(spec.get("windows"), "windows")
    if not windows and "linux" in spec:
        raise InvalidSpec("windows", "this is a Linux spec; the Windows runtime needs the windows section")
    resources = _obj(windows.get("resources"), "windows.resources")
    dirs, pipes = mounts(spec.get("mounts"), resolve)
    hostname = _str(spec.get("hostname"), "hostname")
    if not parents:
        raise InvalidSpec("rootfs.layers", "a Windows container needs at least its base layer")
    for layer in parents:
        if not GUID_RE.match(layer.id):
            raise InvalidSpec("rootfs.layers", f"layer {layer.path!r} has no valid GUID id ({layer.id!r})")
    return S.Container(
        guest_os=S.GuestOs(host_name=hostname) if hostname else None,
        storage=S.Storage(layers=parents, path=storage_path),
        mapped_directories=dirs,
        mapped_pipes=pipes,
        memory=memory(resources, "windows.resources"),
        processor=processor(resources, host, "windows.resources"),
        networking=networking(windows),
        registry_changes=S.RegistryChanges(add_values=(WAIT_TO_KILL,)),
        assigned_devices=devices(windows.get("devices")),
    )


# ---------------------------------------------------------------- Hyper-V


@dataclass(frozen=True)
class UtilityVmConfig:
    processor_count: int = 2
    memory_mb: int = 1024


VSMB_PREFIX = "\\\\?\\VMSMB\\VSMB-{dcc079ae-60ba-4d07-847c-3493609c0870}\\"
UVM_BOOT = "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"


def uvm_os_share(uvm_files: str) -> S.VirtualSmbShare:
    """The base layer's UtilityVM\\Files folder, which the utility VM boots from."""
    return S.VirtualSmbShare(name="os", path=uvm_files,
                             options=S.VirtualSmbShareOptions(read_only=True, share_read=True, cache_io=True,
                                                              take_backup_privilege=True))


def layer_share(layer: S.Layer) -> S.VirtualSmbShare:
    """A read-only VSMB share of one layer folder, named after its layer GUID."""
    return S.VirtualSmbShare(name=layer.id, path=layer.path,
                             options=S.VirtualSmbShareOptions(read_only=True, share_read=True, cache_io=True,
                                                              take_backup_privilege=True))


def uvm_document(uvm_files: str, scratch_vhd: str, cfg: UtilityVmConfig, *, owner: str) -> S.ComputeSystem:
    """The utility VM of a Hyper-V isolated pod (§2.3); `uvm_files` is `<base layer>\\UtilityVM\\Files`."""
    vm = S.VirtualMachine(
        stop_on_reset=True,
        chipset=S.Chipset(uefi=S.Uefi(boot_this=S.UefiBootEntry(device_type="VmbFs", device_path=UVM_BOOT))),
        compute_topology=S.Topology(memory=S.VmMemory(size_in_mb=cfg.memory_mb, allow_overcommit=True),
                                    processor=S.VmProcessor(count=cfg.processor_count)),
        guest_connection=S.GuestConnection(),
        devices=S.Devices(
            scsi={"0": S.Scsi(attachments={"0": S.Attachment(type="VirtualDisk", path=scratch_vhd)})},
            hv_socket=S.VmHvSocket(S.HvSocketSystemConfig(
                default_bind_security_descriptor="D:P(A;;FA;;;SY)(A;;FA;;;BA)")),
            virtual_smb=S.VirtualSmb(shares=(uvm_os_share(uvm_files),), direct_file_mapping_in_mb=1024),
        ),
    )
    return S.ComputeSystem(owner=owner, virtual_machine=vm)


def hosted_document(spec: Mapping[str, Any], parents: tuple[S.Layer, ...], guest_scratch: str, host: HostInfo,
                    uvm_id: str, uvm: UtilityVmConfig, *, owner: str,
                    resolve: Callable[[str], str] = lambda p: p) -> S.ComputeSystem:
    """A container inside the pod's utility VM; its layers are the VSMB shares of `parents`."""
    shared = tuple(S.Layer(id=p.id, path=VSMB_PREFIX + p.id) for p in parents)
    container = _container(spec, shared, guest_scratch, HostInfo(uvm.processor_count), resolve)
    cpu = container.processor
    if cpu is not None and cpu.maximum:
        # ScaleCpuLimitsToSandbox: Maximum is a share of the host; inside the VM it is a share of its vCPUs.
        scaled = min(CPU_MAXIMUM_MAX, max(1, cpu.maximum * host.logical_processors // uvm.processor_count))
        container = replace(container, processor=S.ContainerProcessor(maximum=scaled))
    return S.ComputeSystem(owner=owner, hosting_system_id=uvm_id,
                           hosted_system=S.HostedSystem(container=container))


def scsi_attachment_request(controller: int, lun: int, vhd: str, *, add: bool) -> S.ModifySettingRequest:
    path = f"VirtualMachine/Devices/Scsi/{controller}/Attachments/{lun}"
    if add:
        return S.ModifySettingRequest(path, S.RequestType.ADD, S.to_json(S.Attachment(type="VirtualDisk", path=vhd)))
    return S.ModifySettingRequest(path, S.RequestType.REMOVE)


def vsmb_share_request(share: S.VirtualSmbShare, *, add: bool) -> S.ModifySettingRequest:
    if add:
        return S.ModifySettingRequest("VirtualMachine/Devices/VirtualSmb/Shares", S.RequestType.ADD,
                                      S.to_json(share))
    return S.ModifySettingRequest("VirtualMachine/Devices/VirtualSmb/Shares", S.RequestType.REMOVE,
                                  {"Name": share.name})


def network_adapter_request(endpoint_id: str, mac: str, *, add: bool) -> S.ModifySettingRequest:
    path = f"VirtualMachine/Devices/NetworkAdapters/{endpoint_id}"
    if add:
        return S.ModifySettingRequest(path, S.RequestType.ADD,
                                      S.to_json(S.NetworkAdapter(endpoint_id=endpoint_id, mac_address=mac)))
    return S.ModifySettingRequest(path, S.RequestType.REMOVE)
