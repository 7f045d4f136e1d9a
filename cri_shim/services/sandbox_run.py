"""RunPodSandbox: reserve the name, make the pod's files, network namespace, network and shim; READY on return.

Every step pushes its undo; a failure (or a failpoint) anywhere rolls back
what was done and answers with the error. The record is written as CREATING
right after the name is reserved, so a daemon killed mid-way leaves a row
that restart recovery finds and cleans up; CREATING rows are never listed.

kubelet's deadline: the creation runs as its own task (store/inflight.py).
If the caller's deadline expires, the work goes on; a retry with the same
metadata gets the finished sandbox instead of "name is reserved", and an
unclaimed one is removed after `lifecycle.creation_claim_timeout`.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import AlreadyExists, InvalidArgument
from cri_shim.services import container_events, phases, sandbox_files, sandbox_remove, windows_pods
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.services.undo import UndoStack
from cri_shim.store.sandbox import Sandbox, SandboxState, sandbox_name
from cri_shim.types import SandboxId
from runtime import base

log = logging.getLogger(__name__)

_NS_MODES = {pb.POD: base.NamespaceMode.POD, pb.CONTAINER: base.NamespaceMode.CONTAINER,
             pb.NODE: base.NamespaceMode.NODE, pb.TARGET: base.NamespaceMode.TARGET}


def validate_metadata(config: pb.PodSandboxConfig) -> None:
    meta = config.metadata
    for field_name in ("name", "namespace", "uid"):
        value = getattr(meta, field_name)
        if not value:
            raise InvalidArgument(f"config.metadata.{field_name} is required")
        if len(value) > 253 or any(c in value for c in "\0/\n"):
            raise InvalidArgument(f"config.metadata.{field_name}: {value!r} is not valid "
                                  "(at most 253 characters, no '/', NUL or line breaks)")
    if meta.attempt < 0:
        raise InvalidArgument("config.metadata.attempt cannot be negative")


def validate(config: pb.PodSandboxConfig) -> None:
    """A Linux pod's config."""
    validate_metadata(config)
    if config.log_directory and not config.log_directory.startswith("/"):
        raise InvalidArgument(f"config.log_directory: {config.log_directory!r} must be an absolute path")
    if config.HasField("windows"):
        raise InvalidArgument("config.windows: this node runs Linux pods")
    sandbox_files.check_hostname(config.hostname)
    sandbox_files.check_dns(config.dns_config)
    opts = config.linux.security_context.namespace_options
    if opts.network not in (pb.POD, pb.NODE):
        raise InvalidArgument("config.linux.security_context.namespace_options.network: must be POD or NODE")
    if opts.ipc not in (pb.POD, pb.NODE):
        raise InvalidArgument("config.linux.security_context.namespace_options.ipc: must be POD or NODE")
    if opts.pid not in (pb.POD, pb.CONTAINER, pb.NODE):
        raise InvalidArgument("config.linux.security_context.namespace_options.pid: must be POD, CONTAINER or NODE")
    check_userns(config)
    parent = config.linux.cgroup_parent
    if parent and (not parent.startswith("/") or ".." in parent.split("/")):
        raise InvalidArgument(f"config.linux.cgroup_parent: {parent!r} must be an absolute cgroupfs path "
                              "(this runtime uses the cgroupfs driver)")


_USERNS = "config.linux.security_context.namespace_options.userns_options"


def check_userns(config: pb.PodSandboxConfig) -> None:
    """userns_options: NODE (or unset) = the host's; POD = a user namespace for the pod, with exactly one
    uid and one gid range that maps container id 0 (kubelet's form). CONTAINER and TARGET do not exist
    for user namespaces."""
    opts = config.linux.security_context.namespace_options
    if not opts.HasField("userns_options") or opts.userns_options.mode == pb.NODE:
        if opts.HasField("userns_options") and (opts.userns_options.uids or opts.userns_options.gids):
            raise InvalidArgument(f"{_USERNS}: uids/gids are only valid with mode POD")
        return
    u = opts.userns_options
    if u.mode != pb.POD:
        raise InvalidArgument(f"{_USERNS}.mode: {pb.NamespaceMode.Name(u.mode)} is not supported for user "
                              "namespaces (use POD for a pod user namespace, or NODE for the host's)")
    for name, ranges in (("uids", u.uids), ("gids", u.gids)):
        if len(ranges) != 1:
            raise InvalidArgument(f"{_USERNS}.{name}: exactly one mapping is supported, got {len(ranges)}")
        m = ranges[0]
        if m.container_id != 0:
            raise InvalidArgument(f"{_USERNS}.{name}[0].container_id: must be 0 (container id 0 must be mapped), "
                                  f"got {m.container_id}")
        if m.length == 0 or m.host_id == 0 or m.host_id + m.length > 1 << 32:
            raise InvalidArgument(f"{_USERNS}.{name}[0]: host ids {m.host_id}..{m.host_id + m.length - 1} must be "
                                  "a non-empty range that excludes host id 0 and ends below 2^32")
    if opts.network == pb.NODE or opts.pid == pb.NODE or opts.ipc == pb.NODE:
        raise InvalidArgument(f"{_USERNS}: a pod with a user namespace cannot use the host's network, PID or "
                              "IPC namespace")
    if config.linux.security_context.privileged:
        raise InvalidArgument(f"{_USERNS}: a privileged pod cannot have a user namespace")


def userns_mappings(config: pb.PodSandboxConfig) -> tuple[tuple[base.IdMapping, ...], tuple[base.IdMapping, ...]]:
    opts = config.linux.security_context.namespace_options
    u = opts.userns_options
    if not opts.HasField("userns_options") or u.mode != pb.POD:   # unset: mode reads 0, which is POD
        return (), ()
    return (tuple(base.IdMapping(m.container_id, m.host_id, m.length) for m in u.uids),
            tuple(base.IdMapping(m.container_id, m.host_id, m.length) for m in u.gids))


def cgroup_parent(state: RuntimeState, config: pb.PodSandboxConfig, sandbox_id: str) -> str:
    """kubelet's pod cgroup, or a per-pod cgroup under the configured parent."""
    given = config.linux.cgroup_parent.rstrip("/")
    return given or f"{state.config.lifecycle.cgroup_parent.rstrip('/')}/{sandbox_id}"


def sandbox_spec(sb: Sandbox, hostname: str) -> base.SandboxSpec:
    cfg = sb.config
    opts = cfg.linux.security_context.namespace_options
    uids, gids = userns_mappings(cfg)
    return base.SandboxSpec(
        id=sb.id, name=f"{cfg.metadata.namespace}/{cfg.metadata.name}", hostname=hostname,
        sandbox_dir=sb.sandbox_dir, log_directory=cfg.log_directory, annotations=dict(cfg.annotations),
        linux=base.LinuxSandboxSpec(
            cgroup_parent=sb.cgroup_parent, network=_NS_MODES[opts.network], pid=_NS_MODES[opts.pid],
            ipc=_NS_MODES[opts.ipc], netns_path=sb.netns_path, sysctls=dict(cfg.linux.sysctls),
            uid_mappings=uids, gid_mappings=gids, privileged=cfg.linux.security_context.privileged))


async def run_pod_sandbox(state: RuntimeState, request: pb.RunPodSandboxRequest) -> pb.RunPodSandboxResponse:
    config = request.config
    handler = request.runtime_handler
    windows = windows_pods.is_windows_request(state, handler, config)
    if windows:
        validate_metadata(config)
        windows_pods.validate_sandbox(config, handler)
        sandbox_files.check_hostname(config.hostname)
        sandbox_files.check_dns(config.dns_config)
    else:
        validate(config)
    backend = state.backend(handler)  # unknown handler: NotFound before anything is made
    if userns_mappings(config)[0] and not backend.features.user_namespaces:
        raise InvalidArgument(f"{_USERNS}: the runtime handler {handler!r} does not support user namespaces "
                              "on this host (see `crictl info`, runtimeHandlers features)")
    name = sandbox_name(config.metadata)
    if not state.sandbox_inflight.pending(name):
        holder = state.sandbox_names.holder(name)
        if holder is not None:
            raise AlreadyExists(f"a pod sandbox named {name!r} already exists ({holder}); remove it first, "
                                "or use a new attempt number")

    async def create() -> str:
        return await _create(state, config, handler, name, windows)

    async def cleanup(sandbox_id: str) -> None:
        await sandbox_remove.remove_by_id(state, sandbox_id)

    sandbox_id = await state.sandbox_inflight.run(name, create, cleanup)
    return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


async def _create(state: RuntimeState, config: pb.PodSandboxConfig, handler: str, name: str,
                  windows: bool = False) -> str:
    sid = SandboxId(secrets.token_hex(32))
    fp, timer = state.failpoints, state.phases
    if windows:
        host_network = windows_pods.host_process(config)
    else:
        host_network = config.linux.security_context.namespace_options.network == pb.NODE
    undo = UndoStack(f"RunPodSandbox {name}")
    try:
        with timer.time(phases.RESERVE, sid):
            state.sandbox_names.reserve(name, sid)
            undo.push("release the name", lambda: state.sandbox_names.release(name, sid))
            if windows:   # no Linux netns or cgroup; the HCN namespace is recorded once it exists
                sb = Sandbox(id=sid, name=name, config=config, handler=handler, created_at=time.time_ns(),
                             sandbox_dir=str(state.sandbox_dir(sid)), extra={windows_pods.WINDOWS: True})
            else:
                sb = Sandbox(id=sid, name=name, config=config, handler=handler, created_at=time.time_ns(),
                             sandbox_dir=str(state.sandbox_dir(sid)),
                             netns_path=None if host_network else str(state.netns_path(sid)),
                             cgroup_parent=cgroup_parent(state, config, sid))
            state.sandboxes.add(sb)
            undo.push("delete the record", lambda: state.sandboxes.delete(sid))
        await fp.hit("sandbox_run.after_reserve")

        hostname = sandbox_files.pod_hostname(config)
        with timer.time(phases.SANDBOX_FILES, sid):
            undo.push("remove the sandbox dir", lambda: shutil.rmtree(sb.sandbox_dir, ignore_errors=True))
            if windows:   # Windows takes DNS from CNI and has no /etc files to bind
                Path(sb.sandbox_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            else:
                sandbox_files.write_sandbox_files(Path(sb.sandbox_dir), config, hostname)
        await fp.hit("sandbox_run.after_files")

        if windows and not host_network:
            with timer.time(phases.NETNS, sid), mapped("cannot create the pod's HCN namespace"):
                undo.push("delete the HCN namespace", lambda: windows_pods.delete_namespace(state, sid))
                namespace = await windows_pods.ensure_namespace(state, sid)
            sb = sb.with_(extra={**sb.extra, windows_pods.HCN_NAMESPACE: namespace})
            state.sandboxes.put(sb)
            await fp.hit("sandbox_run.after_netns")
            with timer.time(phases.NETWORK, sid):
                undo.push("tear down the network", lambda: state.network.teardown(sid, namespace, config))
                ips = await state.network.setup(sid, namespace, config)
            sb = sb.with_(ips=ips, network_ready=True)
            state.sandboxes.put(sb)
            await fp.hit("sandbox_run.after_network")
        elif sb.netns_path is not None:
            from runtime.linux import netns   # Linux only: not imported on a Windows node
            netns_path = Path(sb.netns_path)
            with timer.time(phases.NETNS, sid), mapped("cannot create the pod's network namespace"):
                netns_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                undo.push("remove the netns", lambda: netns.remove(netns_path))
                uids, gids = userns_mappings(config)
                if uids:
                    # Owned by the pod's user namespace, so its root has CAP_NET_* over its own network.
                    await netns.create_in_new_userns_async(
                        netns_path, [(m.container_id, m.host_id, m.size) for m in uids],
                        [(m.container_id, m.host_id, m.size) for m in gids])
                else:
                    await netns.create_async(netns_path)
            await fp.hit("sandbox_run.after_netns")
            with timer.time(phases.NETWORK, sid):
                undo.push("tear down the network",
                          lambda: state.network.teardown(sid, str(netns_path), config))
                ips = await state.network.setup(sid, str(netns_path), config)
            sb = sb.with_(ips=ips, network_ready=True)
            sandbox_files.write_file(Path(sb.sandbox_dir), "hosts", sandbox_files.pod_hosts_file(ips, hostname))
            state.sandboxes.put(sb)   # so a crash from here on tears the network down at recovery
            await fp.hit("sandbox_run.after_network")

        backend = state.backend(handler)
        with timer.time(phases.SHIM_SPAWN, sid), mapped("cannot start the pod sandbox"):
            undo.push("remove the sandbox from the runtime", lambda: backend.remove_sandbox(sid))
            spec = windows_pods.sandbox_spec(sb, hostname) if windows else sandbox_spec(sb, hostname)
            status = await backend.create_sandbox(spec)
        await fp.hit("sandbox_run.after_shim")

        sb = sb.with_(state=SandboxState.READY, extra={**sb.extra, "namespaces": dict(status.namespaces),
                                                       "hostname": hostname})
        state.sandboxes.put(sb)
        await fp.hit("sandbox_run.after_ready")
        undo.commit()
    except BaseException:
        await undo.rollback()
        raise
    log.info("pod sandbox %s (%s) is ready%s", sid[:13], name, f", ip {sb.ips[0]}" if sb.ips else "")
    container_events.publish(state, sid, sid, container_events.CREATED)
    container_events.publish(state, sid, sid, container_events.STARTED)
    return sid
