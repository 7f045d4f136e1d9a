"""CreateContainer: reserve (pod, name, attempt), resolve the image, write the OCI bundle, create it; CREATED.

The translation itself is container_spec.py. Like RunPodSandbox, the record
is written as CREATING first, every step pushes its undo, and a creation whose
caller's deadline expired is finished and handed to the retry (inflight).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from typing import Any

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import AlreadyExists, CriError, FailedPrecondition, InvalidArgument, NotFound
from cri_shim.images.store import ContainerImage
from cri_shim.services import container_events, container_remove, container_spec, phases, windows_pods
from cri_shim.services.backend_errors import mapped
from cri_shim.services.container_exits import record_status
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.services.undo import UndoStack
from cri_shim.store.container import Container, ContainerState, container_name
from cri_shim.store.sandbox import Sandbox, SandboxState
from cri_shim.types import ContainerId, ImageId, SandboxId
from runtime import base, oci

log = logging.getLogger(__name__)


def validate(config: pb.ContainerConfig, windows: bool = False) -> None:
    meta = config.metadata
    if not meta.name:
        raise InvalidArgument("config.metadata.name is required")
    if len(meta.name) > 253 or any(c in meta.name for c in "\0/\n"):
        raise InvalidArgument(f"config.metadata.name: {meta.name!r} is not valid "
                              "(at most 253 characters, no '/', NUL or line breaks)")
    if meta.attempt < 0:
        raise InvalidArgument("config.metadata.attempt cannot be negative")
    if not config.image.image:
        raise InvalidArgument("config.image.image is required (a tag, a digest or an image id)")
    if windows:
        windows_pods.validate_container(config)
    elif config.HasField("windows"):
        raise InvalidArgument("config.windows: this pod runs Linux containers (its runtime handler is a Linux one)")
    if config.CDI_devices:
        raise InvalidArgument("config.CDI_devices: CDI devices are not supported by this runtime")
    if config.stdin_once and not config.stdin:
        raise InvalidArgument("config.stdin_once needs config.stdin")


def log_path(sb: Sandbox, config: pb.ContainerConfig) -> str:
    """log_directory + log_path, absolute; "" when either is unset (no logging, as containerd)."""
    directory, relative = sb.config.log_directory, config.log_path
    if not directory or not relative:
        return ""
    if os.path.isabs(relative):
        raise InvalidArgument(f"config.log_path: {relative!r} must be relative to the pod's log_directory")
    path = os.path.normpath(os.path.join(directory, relative))
    if not path.startswith(os.path.normpath(directory) + "/"):
        raise InvalidArgument(f"config.log_path: {relative!r} points outside the pod's log_directory")
    return path


async def create_container(state: RuntimeState, request: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
    sb = state.sandbox(request.pod_sandbox_id)
    config = request.config
    validate(config, windows_pods.is_windows(sb))
    if sb.state is not SandboxState.READY:
        raise FailedPrecondition(f"pod sandbox {sb.id} is not ready (it was stopped); containers can only be "
                                 "created in a ready sandbox")
    name = container_name(sb.id, config.metadata)
    if not state.container_inflight.pending(name):
        holder = state.container_names.holder(name)
        if holder is not None:
            raise AlreadyExists(f"container {config.metadata.name!r} attempt {config.metadata.attempt} already "
                                f"exists in pod sandbox {sb.id} ({holder}); remove it or use a new attempt")

    async def create() -> str:
        return await _create(state, sb, config, name)

    async def cleanup(container_id: str) -> None:
        async with state.container_locks.hold(container_id):
            await container_remove.remove(state, container_id)

    container_id = await state.container_inflight.run(name, create, cleanup)
    return pb.CreateContainerResponse(container_id=container_id)


def _target_pid_ns(state: RuntimeState, sb: Sandbox, config: pb.ContainerConfig) -> str | None:
    opts = config.linux.security_context.namespace_options
    if opts.pid != pb.TARGET:
        return None
    target = state.containers.get(opts.target_id)
    if target is None or target.sandbox_id != sb.id or target.state is not ContainerState.RUNNING or not target.pid:
        return None
    return f"/proc/{target.pid}/ns/pid"


def image_volume_user(container_id: str, index: int) -> str:
    """The image store user id of a container's image volume (the container itself uses its own image)."""
    return f"{container_id}:volume{index}"


async def _use_image_volumes(state: RuntimeState, cid: str, config: pb.ContainerConfig,
                             undo: UndoStack) -> dict[int, container_spec.ImageVolume]:
    """Find each image volume's image and hold it (its snapshots stay while the container exists)."""
    volumes = {}
    for i, text in container_spec.image_volume_requests(config).items():
        user = image_volume_user(cid, i)
        undo.push(f"release image volume {i}", lambda user=user: state.images.remove_user(user))  # type: ignore[misc]
        found = await asyncio.to_thread(state.images.use, text, user)
        volumes[i] = container_spec.ImageVolume(image_id=found.id, layers=found.layers)
    return volumes


def _pod_went_away(state: RuntimeState, sandbox_id: str) -> CriError | None:
    """A create that failed because its pod was stopped or removed meanwhile: say that, not what broke."""
    now = state.sandboxes.get(sandbox_id)
    if now is None:
        return NotFound(f"pod sandbox {sandbox_id} was removed while the container was being created")
    if now.state is not SandboxState.READY:
        return FailedPrecondition(f"pod sandbox {sandbox_id} was stopped while the container was being created")
    return None


def _pod_info(sb: Sandbox) -> container_spec.PodInfo:
    return container_spec.PodInfo(id=sb.id, hostname=str(sb.extra.get("hostname", "")),
                                  cgroup_parent=sb.cgroup_parent, namespaces=dict(sb.extra.get("namespaces") or {}),
                                  config=sb.config)


def _image_info(image: ContainerImage) -> container_spec.ImageInfo:
    cfg = image.config
    return container_spec.ImageInfo(layers=image.layers, entrypoint=cfg.entrypoint, cmd=cfg.cmd, env=cfg.env,
                                    working_dir=cfg.working_dir, user=cfg.user, stop_signal=cfg.stop_signal)


async def _create(state: RuntimeState, sb: Sandbox, config: pb.ContainerConfig, name: str) -> str:
    cid = ContainerId(secrets.token_hex(32))
    fp, timer = state.failpoints, state.phases
    directory = state.container_dir(cid)
    bundle = directory / "bundle"
    undo = UndoStack(f"CreateContainer {config.metadata.name} in {sb.id[:13]}")
    try:
        with timer.time(phases.RESERVE, cid):
            state.container_names.reserve(name, cid)
            undo.push("release the name", lambda: state.container_names.release(name, cid))
            record = Container(id=cid, sandbox_id=SandboxId(sb.id), name=name, config=config, image_id=ImageId(""),
                               image_name=config.image.image, image_ref="", created_at=time.time_ns(),
                               log_path=log_path(sb, config), bundle_dir=str(bundle))
            state.containers.add(record)
            undo.push("delete the record", lambda: state.containers.delete(cid))
        await fp.hit("container_create.after_reserve")

        with timer.time(phases.ROOTFS, cid):
            undo.push("release the image", lambda: state.images.remove_user(cid))
            image = await asyncio.to_thread(state.images.use, config.image.image, cid)
            volumes = await _use_image_volumes(state, cid, config, undo)
        await fp.hit("container_create.after_image")

        windows = windows_pods.is_windows(sb)
        scratch = str(directory / "scratch")
        with timer.time(phases.SPEC, cid):
            built: container_spec.BuiltSpec | None = None
            if windows:
                doc = await asyncio.to_thread(windows_pods.container_spec, config, sb, image, scratch)
            else:
                built = await asyncio.to_thread(container_spec.build, cid, config, _pod_info(sb),
                                                _image_info(image), _target_pid_ns(state, sb, config), None, volumes)
                doc = built.spec
            undo.push("remove the container dir", lambda: shutil.rmtree(directory, ignore_errors=True))
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            (directory / "scratch").mkdir(mode=0o700, exist_ok=True)
            oci.write(bundle, doc)
            if record.log_path:
                os.makedirs(os.path.dirname(record.log_path), mode=0o755, exist_ok=True)
        await fp.hit("container_create.after_bundle")

        backend = state.backend(sb.handler)
        stop_signal = built.stop_signal if built is not None else windows_pods.DEFAULT_STOP_SIGNAL
        spec = base.ContainerSpec(
            id=cid, sandbox_id=sb.id, bundle_dir=str(bundle),
            rootfs=base.RootfsSpec(layers=image.layers, scratch=scratch,
                                   readonly=config.linux.security_context.readonly_rootfs),
            stdio=base.StdioSpec(log_path=record.log_path or None, stdin=config.stdin, stdin_once=config.stdin_once,
                                 tty=config.tty),
            stop_signal=stop_signal)
        undo.push("delete the container from the runtime", lambda: backend.delete_container(cid))
        try:
            with timer.time(phases.CREATE, cid), mapped("cannot create the container"):
                status = await backend.create_container(spec)
        except CriError as e:
            raise _pod_went_away(state, sb.id) or e from None
        await fp.hit("container_create.after_create")
        gone = _pod_went_away(state, sb.id)   # stopped/removed meanwhile (RemovePodSandbox skips creations in flight)
        if gone is not None:
            raise gone

        extra: dict[str, Any] = {"stop_signal": stop_signal, "stop_signal_cri": int(config.stop_signal),
                                 "image_volumes": {str(i): v.image_id for i, v in volumes.items()}}
        if built is not None:
            user = {"uid": built.user.uid, "gid": built.user.gid, "groups": list(built.user.additional_gids)}
            resources = built.resources
            extra["cgroups_path"] = built.spec["linux"]["cgroupsPath"]
        else:   # Windows: the user is a name in config.json, not uid/gid
            user = {}
            resources = windows_pods.resources_record(config.windows.resources)
        record = record.with_(state=ContainerState.CREATED, image_id=image.id, image_ref=image.id,
                              resources=resources, user=user, extra=extra)
        state.containers.put(record)
        record_status(state, status)
        undo.commit()
    except BaseException:
        await undo.rollback()
        raise
    log.info("container %s (%s) created in pod sandbox %s", cid[:13], config.metadata.name, sb.id[:13])
    container_events.publish(state, cid, sb.id, container_events.CREATED)
    return cid
