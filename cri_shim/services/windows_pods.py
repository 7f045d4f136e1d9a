"""Windows pods in the lifecycle: what the pod and container services do differently on a Windows handler.

A pod is a Windows pod when its runtime handler is one of the node's Windows
handlers (`RuntimeState.windows.names`; on a Windows node "" is one too). The
services keep their flow (reservation, CREATING record, undo stack, events);
this module supplies the Windows steps:

- RunPodSandbox: no Linux netns, cgroup or hostname/hosts/resolv.conf files
  (Windows takes DNS from CNI); the pod's HCN namespace is created with
  `namespaces.ensure` (HostProcess pods use the host network: none), CNI runs
  with the namespace GUID as its netns, and the backend gets a
  WindowsSandboxSpec from `windows_mapping.sandbox_windows`;
- CreateContainer: `windows_mapping.container_spec` builds config.json from the
  image's layer folders and the container's scratch directory;
- UpdateContainerResources: `windows_mapping.update_resources`;
- stats: PodSandboxStats.windows (`windows_mapping.sandbox_stats`);
- StopPodSandbox / RemovePodSandbox: CNI DEL with the GUID, then the namespace
  is deleted (its id is derived from the pod id, so a crashed creation's
  namespace is found too).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from google.protobuf import json_format

from cri_shim import windows_mapping
from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument
from cri_shim.images.store import ContainerImage
from cri_shim.services.runtime_state import HcnNamespaces, RuntimeState
from cri_shim.store.sandbox import Sandbox
from runtime import base

WINDOWS = "windows"               # Sandbox.extra: this pod runs on a Windows handler
HCN_NAMESPACE = "hcn_namespace"   # Sandbox.extra: the pod's HCN namespace GUID ("" for HostProcess)
RESOURCES = "windows"             # Container.resources: {"windows": WindowsContainerResources as a dict}
DEFAULT_STOP_SIGNAL = 15          # SIGTERM: the backend sends CtrlShutdown
_ABSOLUTE = re.compile(r"^([A-Za-z]:\\|/)")


def is_windows_request(state: RuntimeState, handler: str, config: pb.PodSandboxConfig) -> bool:
    """Whether RunPodSandbox makes a Windows pod; `windows` settings on a Linux handler are refused."""
    if handler in state.windows.names:
        return True
    if config.HasField("windows"):
        state.backend(handler)   # an unknown handler is NotFound, as for any pod
        known = ", ".join(sorted(state.windows.names)) or "none on this node"
        raise InvalidArgument(f"config.windows: runtime handler {handler!r} runs Linux pods; a Windows pod needs a "
                              f"Windows runtime handler ({known})")
    return False


def is_windows(sb: Sandbox) -> bool:
    return bool(sb.extra.get(WINDOWS))


def validate_sandbox(config: pb.PodSandboxConfig, handler: str) -> None:
    """The Windows-only checks of RunPodSandbox (metadata is checked by the caller)."""
    if config.log_directory and not _ABSOLUTE.match(config.log_directory):
        raise InvalidArgument(f"config.log_directory: {config.log_directory!r} must be an absolute path")
    if config.HasField("linux") and config.linux.security_context.privileged:
        raise InvalidArgument("config.linux.security_context.privileged: a Windows pod has no Linux settings; "
                              "use windows.security_context.host_process")
    windows_mapping.sandbox_windows(config, handler, None)   # handler / host_process / gMSA rules


def host_process(config: pb.PodSandboxConfig) -> bool:
    return config.windows.security_context.host_process


def sandbox_spec(sb: Sandbox, hostname: str) -> base.SandboxSpec:
    cfg = sb.config
    namespace = str(sb.extra.get(HCN_NAMESPACE) or "") or None
    return base.SandboxSpec(
        id=sb.id, name=f"{cfg.metadata.namespace}/{cfg.metadata.name}", hostname=hostname,
        sandbox_dir=sb.sandbox_dir, log_directory=cfg.log_directory, annotations=dict(cfg.annotations),
        windows=windows_mapping.sandbox_windows(cfg, sb.handler, namespace))


def _namespaces(state: RuntimeState) -> HcnNamespaces:
    if state.windows.namespaces is None:
        raise InvalidArgument("this node has no HCN (Windows host networking); only HostProcess pods can run")
    return state.windows.namespaces


async def ensure_namespace(state: RuntimeState, sandbox_id: str) -> str:
    return str(await asyncio.to_thread(_namespaces(state).ensure, sandbox_id))


async def delete_namespace(state: RuntimeState, sandbox_id: str) -> None:
    namespaces = state.windows.namespaces
    if namespaces is not None:
        await asyncio.to_thread(namespaces.delete, namespaces.namespace_id(sandbox_id))


async def release_network(state: RuntimeState, sb: Sandbox) -> None:
    """CNI DEL with the namespace GUID (once), then the namespace itself. Safe to repeat."""
    namespace = str(sb.extra.get(HCN_NAMESPACE) or "")
    if sb.network_ready:
        await state.failpoints.hit("sandbox_stop.before_network_teardown")
        await state.network.teardown(sb.id, namespace, sb.config)
        state.sandboxes.put(sb.with_(network_ready=False))
    if not host_process(sb.config):
        await delete_namespace(state, sb.id)


# ---------------------------------------------------------------- containers


def validate_container(config: pb.ContainerConfig) -> None:
    if config.HasField("linux") and config.linux.ByteSize():
        raise InvalidArgument("config.linux: a container in a Windows pod cannot have Linux settings")


def image_of(image: ContainerImage) -> windows_mapping.WindowsImage:
    cfg = image.config
    return windows_mapping.WindowsImage(entrypoint=cfg.entrypoint, cmd=cfg.cmd, env=cfg.env,
                                        working_dir=cfg.working_dir, user=cfg.user)


def pod_of(sb: Sandbox) -> windows_mapping.WindowsPod:
    hostname = str(sb.extra.get("hostname", ""))
    return windows_mapping.WindowsPod(id=sb.id, hostname=hostname, config=sb.config,
                                      spec=sandbox_spec(sb, hostname).windows or base.WindowsSandboxSpec())


def _resolve(path: str) -> str:
    """Host paths of mounts, resolved on Windows (symlinks, junctions); kept as given elsewhere (the fake node)."""
    return os.path.realpath(path) if os.name == "nt" else path


def container_spec(config: pb.ContainerConfig, sb: Sandbox, image: ContainerImage, scratch: str) -> dict[str, Any]:
    """config.json of a Windows container: the image's layers (base first) with the scratch on top."""
    return windows_mapping.container_spec(config, pod_of(sb), image_of(image), [*image.layers, scratch],
                                          resolve=_resolve)


def resources_record(r: pb.WindowsContainerResources) -> dict[str, Any]:
    """What ContainerStatus.resources reports (kept in the container record)."""
    return {RESOURCES: json_format.MessageToDict(r, preserving_proto_field_name=True)}


def resources_message(record: dict[str, Any]) -> pb.ContainerResources | None:
    if RESOURCES not in record:
        return None
    return pb.ContainerResources(windows=json_format.ParseDict(record[RESOURCES], pb.WindowsContainerResources()))


def update_request(request: pb.UpdateContainerResourcesRequest) -> dict[str, Any] | None:
    """The OCI windows.resources to apply, None when the request carries no Windows resources."""
    if request.HasField("linux") and request.linux.ByteSize():
        raise InvalidArgument("linux: this container runs in a Windows pod; send windows resources")
    if not request.HasField("windows"):
        return None
    return windows_mapping.update_resources(request.windows)


def pod_stats(state: RuntimeState, sb: Sandbox, stats: base.SandboxStats) -> pb.WindowsPodSandboxStats:
    attributes = {}
    for cid in stats.containers:
        c = state.containers.get(cid)
        if c is not None:
            attributes[cid] = pb.ContainerAttributes(id=c.id, metadata=c.config.metadata, labels=c.config.labels,
                                                     annotations=c.config.annotations)
    return windows_mapping.sandbox_stats(stats, attributes)
