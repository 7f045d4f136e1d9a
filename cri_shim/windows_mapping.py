"""CRI -> Windows: PodSandboxConfig / ContainerConfig to WindowsSandboxSpec and the OCI spec (Windows flavour).

The Windows backend (runtime.windows) reads the OCI `config.json` this module
builds; it never sees CRI messages. Rules are containerd's
(`internal/cri/server/*_windows.go`, `internal/cri/opts/spec_windows*.go`) and
kubelet's (`kuberuntime_container_windows.go`):

- runtime handlers `runhcs-wcow-process` (process isolation) and
  `runhcs-wcow-hypervisor` (Hyper-V: a utility VM per pod);
- host_process must be the same on the pod and every container; it implies
  the host network (no HCN namespace);
- CPU: count, maximum and shares are mutually exclusive on Windows. As kubelet
  does, count wins over maximum; shares together with either is an error (as
  in containerd). maximum is clamped to [1, 10000] like kubelet computes it
  (`10000 * limit_milli / num_cpus / 1000`); count is clamped to the host's
  processors by the backend;
- memory_limit_in_bytes -> windows.resources.memory.limit; rootfs_size_in_bytes
  -> windows.resources.storage.sandboxSize (the backend expands sandbox.vhdx);
- run_as_username: the container's, else the pod's, else the image's user;
- mounts: `\\dir` gets `C:`, a bare drive is refused, named pipes
  (`\\\\.\\pipe\\name`) map to pipes, readonly -> "ro"; host paths resolved;
- devices: `IDType://ID` or the legacy `class/GUID` -> windows.devices;
- the command line: the image's first argument verbatim when the image says
  ArgsEscaped (Windows images built by docker), else args quoted by Windows rules.
"""

from __future__ import annotations

import ntpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument, Unimplemented
from runtime import base
from runtime.windows.cmdline import join_args

HANDLER_PROCESS = "runhcs-wcow-process"
HANDLER_HYPERV = "runhcs-wcow-hypervisor"
HOST_PROCESS_ANNOTATION = "microsoft.com/hostprocess-container"
CPU_MAXIMUM_MAX = 10_000
CPU_SHARES_MAX = 10_000
MIB = 1 << 20
PIPE_PREFIX = "\\\\.\\pipe\\"
GUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
DEVICE_RE = re.compile(r"^(?P<type>[a-z][a-z0-9-]*)://(?P<id>.+)$")
DEFAULT_CWD = "C:\\"


@dataclass(frozen=True)
class WindowsImage:
    """What the mapping needs from a Windows image's config."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    args_escaped: bool = False


def is_windows_handler(handler: str) -> bool:
    return handler in (HANDLER_PROCESS, HANDLER_HYPERV)


def kubelet_cpu_maximum(limit_milli: int, num_cpus: int) -> int:
    """What kubelet sends as cpu_maximum for a CPU limit (500m on 4 CPUs -> 1250)."""
    return min(CPU_MAXIMUM_MAX, max(1, 10_000 * limit_milli // num_cpus // 1000))


# ---------------------------------------------------------------- the pod


def sandbox_windows(config: pb.PodSandboxConfig, handler: str, network_namespace: str | None) -> base.WindowsSandboxSpec:
    """WindowsSandboxSpec of RunPodSandbox. `network_namespace` is the HCN namespace GUID (None for HostProcess)."""
    if handler and not is_windows_handler(handler):
        raise InvalidArgument(f"runtime_handler: {handler!r} is not a Windows handler "
                              f"({HANDLER_PROCESS} or {HANDLER_HYPERV})")
    sc = config.windows.security_context
    if sc.credential_spec:
        raise Unimplemented("windows.security_context.credential_spec: gMSA credential specs are not supported yet")
    if sc.host_process:
        if handler == HANDLER_HYPERV:
            raise InvalidArgument("windows.security_context.host_process: HostProcess pods cannot use the "
                                  f"{HANDLER_HYPERV} handler")
        network_namespace = None
    elif network_namespace is not None and not GUID_RE.match(network_namespace):
        raise InvalidArgument(f"network namespace {network_namespace!r} is not an HCN namespace GUID")
    return base.WindowsSandboxSpec(host_process=sc.host_process, network_namespace=network_namespace,
                                   run_as_username=sc.run_as_username, hyperv=handler == HANDLER_HYPERV)


# ---------------------------------------------------------------- resources


def resources(r: pb.WindowsContainerResources) -> dict[str, Any]:
    """OCI windows.resources from CRI WindowsContainerResources."""
    for name in ("cpu_shares", "cpu_count", "cpu_maximum", "memory_limit_in_bytes", "rootfs_size_in_bytes"):
        if getattr(r, name) < 0:
            raise InvalidArgument(f"resources.{name}: {getattr(r, name)} must not be negative")
    if len(r.affinity_cpus):
        raise Unimplemented("resources.affinity_cpus: CPU affinity of Windows containers is not supported yet")
    count, maximum, shares = r.cpu_count, r.cpu_maximum, r.cpu_shares
    if count and maximum:
        maximum = 0                      # kubelet's precedence: CPUCount over CPUMaximum
    if shares and (count or maximum):
        raise InvalidArgument("resources: cpu_shares cannot be combined with cpu_count or cpu_maximum on Windows "
                              "(the job object takes either a weight or a hard cap)")
    if shares > CPU_SHARES_MAX:
        raise InvalidArgument(f"resources.cpu_shares: {shares} is above the Windows maximum of {CPU_SHARES_MAX}")
    if maximum:
        maximum = min(CPU_MAXIMUM_MAX, max(1, maximum))
    if r.memory_limit_in_bytes and r.memory_limit_in_bytes < MIB:
        raise InvalidArgument(f"resources.memory_limit_in_bytes: {r.memory_limit_in_bytes} is below 1 MiB")
    out: dict[str, Any] = {}
    cpu = {k: v for k, v in (("count", count), ("maximum", maximum), ("shares", shares)) if v}
    if cpu:
        out["cpu"] = cpu
    if r.memory_limit_in_bytes:
        out["memory"] = {"limit": r.memory_limit_in_bytes}
    if r.rootfs_size_in_bytes:
        out["storage"] = {"sandboxSize": r.rootfs_size_in_bytes}
    return out


# ---------------------------------------------------------------- process


def argv(config: pb.ContainerConfig, image: WindowsImage) -> tuple[tuple[str, ...], bool]:
    """The command and whether its first element is the image's (for ArgsEscaped)."""
    command, args = tuple(config.command), tuple(config.args)
    from_image = not command
    if from_image:
        command = image.entrypoint
        if not args:
            args = image.cmd
    out = command + args
    if not out or not out[0]:
        raise InvalidArgument("config.command: no command to run: the image has no ENTRYPOINT or CMD and "
                              "neither config.command nor config.args is set")
    for i, a in enumerate(out):
        if "\0" in a:
            raise InvalidArgument(f"config.command/args[{i}]: contains a NUL character")
    return out, from_image


def process_args(config: pb.ContainerConfig, image: WindowsImage) -> dict[str, Any]:
    """`args`, or `commandLine` when an ArgsEscaped image supplies the (already escaped) program."""
    args, from_image = argv(config, image)
    if image.args_escaped and from_image:
        line = args[0] + (" " + join_args(args[1:]) if len(args) > 1 else "")
        return {"commandLine": line}
    return {"args": list(args)}


def environment(config: pb.ContainerConfig, image: WindowsImage) -> list[str]:
    """The image's environment, then the config's; names compare case-insensitively as on Windows."""
    env: dict[str, tuple[str, str]] = {}
    for item in image.env:
        name, _, value = item.partition("=")
        if name:
            env[name.upper()] = (name, value)
    for i, kv in enumerate(config.envs):
        if not kv.key or "=" in kv.key or "\0" in kv.key:
            raise InvalidArgument(f"config.envs[{i}].key: {kv.key!r} is not a valid environment variable name")
        raw = bytes(kv.value)
        if b"\0" in raw:
            raise InvalidArgument(f"config.envs[{i}].value: the value of {kv.key} contains a NUL byte")
        env[kv.key.upper()] = (kv.key, raw.decode("utf-8", "surrogateescape"))
    return [f"{n}={v}" for n, v in env.values()]


def username(config: pb.ContainerConfig, pod: pb.PodSandboxConfig, image: WindowsImage) -> str:
    """The container's, else the pod's, else the image's user; a HostProcess container never takes the
    image's (it names an account inside an image, not on the host)."""
    chosen = config.windows.security_context.run_as_username or pod.windows.security_context.run_as_username
    if chosen or config.windows.security_context.host_process:
        return chosen
    return image.user


# ---------------------------------------------------------------- mounts and devices


def container_path(path: str, where: str) -> str:
    if path.startswith("\\") and not path.startswith("\\\\"):
        path = "C:" + path
    if not re.match(r"^[A-Za-z]:\\.", path):
        raise InvalidArgument(f"{where}: {path!r} must be an absolute Windows path below a drive root "
                              "(C:\\dir); mounting over a whole drive is not allowed")
    return ntpath.normpath(path)


def mounts(config: pb.ContainerConfig, resolve: Callable[[str], str]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(config.mounts):
        where = f"config.mounts[{i}]"
        if m.propagation != pb.PROPAGATION_PRIVATE:
            raise InvalidArgument(f"{where}.propagation: Windows has no mount propagation")
        if len(m.uidMappings) or len(m.gidMappings):
            raise InvalidArgument(f"{where}: id-mapped mounts do not exist on Windows")
        if m.recursive_read_only:
            raise Unimplemented(f"{where}.recursive_read_only: not supported on Windows")
        if m.HasField("image") and m.image.image:
            raise Unimplemented(f"{where}.image: image volumes are not supported on Windows yet")
        if not m.host_path:
            raise InvalidArgument(f"{where}.host_path: empty")
        if m.host_path.lower().startswith(PIPE_PREFIX):
            if not m.container_path.lower().startswith(PIPE_PREFIX):
                raise InvalidArgument(f"{where}.container_path: a named pipe maps to {PIPE_PREFIX}<name>")
            out.append({"source": m.host_path, "destination": m.container_path})
            continue
        if not re.match(r"^([A-Za-z]:\\|\\\\)", m.host_path):
            raise InvalidArgument(f"{where}.host_path: {m.host_path!r} is not an absolute Windows path")
        entry: dict[str, Any] = {"source": ntpath.normpath(resolve(m.host_path)),
                                 "destination": container_path(m.container_path, f"{where}.container_path")}
        if m.readonly:
            entry["options"] = ["ro"]
        out.append(entry)
    return out


def devices(config: pb.ContainerConfig) -> list[dict[str, str]]:
    out = []
    for i, d in enumerate(config.devices):
        where = f"config.devices[{i}].host_path"
        match = DEVICE_RE.match(d.host_path)
        if match:
            kind, dev_id = match["type"], match["id"]
        elif d.host_path.startswith("class/"):
            kind, dev_id = "class", d.host_path[len("class/"):]
        else:
            raise InvalidArgument(f"{where}: {d.host_path!r} is not a Windows device (IDType://ID or class/GUID)")
        if kind == "class" and not GUID_RE.match(dev_id):
            raise InvalidArgument(f"{where}: {dev_id!r} is not an interface class GUID")
        out.append({"id": dev_id, "idType": kind})
    return out


# ---------------------------------------------------------------- the spec


@dataclass(frozen=True)
class WindowsPod:
    id: str
    hostname: str
    config: pb.PodSandboxConfig
    spec: base.WindowsSandboxSpec


def container_spec(config: pb.ContainerConfig, pod: WindowsPod, image: WindowsImage, layer_folders: Sequence[str],
                   *, resolve: Callable[[str], str] = lambda p: p) -> dict[str, Any]:
    """The OCI runtime spec (config.json) of a Windows container.

    `layer_folders` are the image's layer folders, base layer first, then the
    container's scratch directory last (OCI `windows.layerFolders` lists them
    topmost first with the scratch last; this function does the reordering).
    """
    if not config.HasField("windows"):
        config_windows = pb.WindowsContainerConfig()
    else:
        config_windows = config.windows
    if config_windows.security_context.host_process != pod.spec.host_process:
        raise InvalidArgument("windows.security_context.host_process: every container of a HostProcess pod must "
                              "be HostProcess, and only those (the pod says "
                              f"{'yes' if pod.spec.host_process else 'no'})")
    if config_windows.security_context.credential_spec:
        raise Unimplemented("windows.security_context.credential_spec: gMSA credential specs are not supported yet")
    if config.HasField("linux") and config.linux.ByteSize():
        raise InvalidArgument("linux: a Windows container cannot have Linux settings")
    if len(layer_folders) < 2:
        raise InvalidArgument("image: a Windows container needs at least a base layer and its scratch")
    cwd = config.working_dir or image.working_dir or DEFAULT_CWD
    process: dict[str, Any] = {"cwd": cwd, "env": environment(config, image), "terminal": config.tty,
                               "user": {"username": username(config, pod.config, image)}}
    process.update(process_args(config, image))
    windows: dict[str, Any] = {"layerFolders": list(reversed(layer_folders[:-1])) + [layer_folders[-1]]}
    res = resources(config_windows.resources)
    if res:
        windows["resources"] = res
    if pod.spec.network_namespace:
        network: dict[str, Any] = {"networkNamespace": pod.spec.network_namespace}
        searches = list(pod.config.dns_config.searches)
        if searches:
            network["DNSSearchList"] = searches
        windows["network"] = network
    devs = devices(config)
    if devs:
        windows["devices"] = devs
    if pod.spec.hyperv:
        windows["hyperv"] = {}
    return {
        "ociVersion": "1.1.0",
        "process": process,
        "hostname": pod.hostname,
        "mounts": mounts(config, resolve),
        "annotations": {HOST_PROCESS_ANNOTATION: "true" if pod.spec.host_process else "false",
                        "io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.sandbox-id": pod.id},
        "windows": windows,
    }


def update_resources(r: pb.WindowsContainerResources) -> dict[str, Any]:
    """UpdateContainerResources: the OCI windows.resources the backend applies to the live container."""
    out = resources(r)
    if "storage" in out:
        raise InvalidArgument("windows.rootfs_size_in_bytes: the scratch size of a running container cannot change")
    return out


# ---------------------------------------------------------------- stats


def container_stats(stats: base.ContainerStats, attributes: pb.ContainerAttributes,
                    previous: base.ContainerStats | None = None) -> pb.WindowsContainerStats:
    """Backend stats -> CRI WindowsContainerStats; usage_nano_cores needs the previous sample."""
    ts = stats.timestamp_ns
    out = pb.WindowsContainerStats(attributes=attributes)
    out.cpu.timestamp = ts
    if stats.cpu_usage_ns is not None:
        out.cpu.usage_core_nano_seconds.value = stats.cpu_usage_ns
        cores = nano_cores(previous, stats)
        if cores is not None:
            out.cpu.usage_nano_cores.value = cores
    out.memory.timestamp = ts
    if stats.memory_working_set_bytes is not None:
        out.memory.working_set_bytes.value = stats.memory_working_set_bytes
    if stats.memory_usage_bytes is not None:
        out.memory.commit_memory_bytes.value = stats.memory_usage_bytes
    if stats.memory_available_bytes is not None:
        out.memory.available_bytes.value = stats.memory_available_bytes
    out.writable_layer.timestamp = ts
    out.writable_layer.fs_id.mountpoint = stats.writable_layer_mountpoint
    if stats.writable_layer_bytes is not None:
        out.writable_layer.used_bytes.value = stats.writable_layer_bytes
    return out


def nano_cores(previous: base.ContainerStats | None, current: base.ContainerStats) -> int | None:
    """CPU use between two samples, in nanocores (1e9 = one core busy)."""
    if previous is None or previous.cpu_usage_ns is None or current.cpu_usage_ns is None:
        return None
    elapsed = current.timestamp_ns - previous.timestamp_ns
    used = current.cpu_usage_ns - previous.cpu_usage_ns
    if elapsed <= 0 or used < 0:
        return None
    return used * 1_000_000_000 // elapsed


def sandbox_stats(stats: base.SandboxStats, containers: dict[str, pb.ContainerAttributes],
                  previous: base.SandboxStats | None = None) -> pb.WindowsPodSandboxStats:
    """Backend pod stats -> CRI WindowsPodSandboxStats, for PodSandboxStats.windows (the caller sets
    PodSandboxStats.attributes); containers without attributes are skipped."""
    out = pb.WindowsPodSandboxStats()
    ts = stats.timestamp_ns
    out.cpu.timestamp = ts
    if stats.cpu_usage_ns is not None:
        out.cpu.usage_core_nano_seconds.value = stats.cpu_usage_ns
        if previous is not None and previous.cpu_usage_ns is not None and ts > previous.timestamp_ns \
                and stats.cpu_usage_ns >= previous.cpu_usage_ns:
            out.cpu.usage_nano_cores.value = ((stats.cpu_usage_ns - previous.cpu_usage_ns) * 1_000_000_000
                                              // (ts - previous.timestamp_ns))
    out.memory.timestamp = ts
    if stats.memory_working_set_bytes is not None:
        out.memory.working_set_bytes.value = stats.memory_working_set_bytes
    if stats.memory_usage_bytes is not None:
        out.memory.commit_memory_bytes.value = stats.memory_usage_bytes
    out.process.timestamp = ts
    if stats.pids is not None:
        out.process.process_count.value = stats.pids
    for cid, cstats in stats.containers.items():
        if cid in containers:
            before = previous.containers.get(cid) if previous is not None else None
            out.containers.append(container_stats(cstats, containers[cid], before))
    return out
