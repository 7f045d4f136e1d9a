"""How a container is built and torn down, per isolation mode. Blocking; called off the event loop.

`HcsEngine` runs process-isolated containers (one HCS compute system per
container, all joined to the pod's HCN namespace) and Hyper-V isolated ones
(one utility VM per pod, each container a system hosted in it). `JobEngine`
runs HostProcess containers on job objects. The backend drives both through
the same `Engine` protocol; every method that creates something records it on
the `Ctr`/`Pod` right away and undoes its own partial work on failure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.base import InvalidSpec, MonitorLost, Unsupported
from runtime.windows import _abi, jobobject, layer_mount, ocimap
from runtime.windows import schema as S
from runtime.windows.hcs import HcsApi, HcsError, SystemHandle
from runtime.windows.jobobject import JobApi, JobProcessSpec
from runtime.windows.layer_mount import LayerMounter
from runtime.windows.network import NamespaceManager
from runtime.windows.procs import HcsProc, JobProc, Proc
from runtime.windows.state import Ctr, Isolation, Pod

log = logging.getLogger(__name__)

# A placeholder volume used to validate a document before anything is mounted.
PLACEHOLDER_VOLUME = "\\\\?\\Volume{00000000-0000-0000-0000-000000000000}\\"
STOP_TIMEOUT_MS = 30_000
SYSTEM_ACCOUNTS = frozenset({"", "nt authority\\system", "system"})


@dataclass(frozen=True)
class EngineConfig:
    owner: str                       # HCS Owner of every system: identifies this daemon instance's systems
    host: ocimap.HostInfo
    uvm: ocimap.UtilityVmConfig
    uvm_dir: str                     # where utility VM scratch disks go
    create_timeout_ms: int = 240_000


class Engine(Protocol):
    def validate(self, pod: Pod, c: Ctr) -> None:
        """Check the spec without side effects (raises InvalidSpec / Unsupported)."""
        ...

    def create(self, pod: Pod, c: Ctr, save: Callable[[], None]) -> None: ...
    def start(self, c: Ctr) -> Proc: ...
    def exec(self, c: Ctr, process: dict[str, Any], stdin: bool) -> Proc: ...
    def after_exit(self, c: Ctr) -> None:
        """The main process ended: stop what is left of the container (bounded)."""
        ...
    def destroy(self, pod: Pod, c: Ctr) -> None:
        """Release everything of the container; idempotent."""
        ...
    def stats(self, c: Ctr) -> S.Statistics: ...
    def update(self, c: Ctr, resources: dict[str, Any]) -> None: ...
    def reattach(self, pod: Pod, c: Ctr) -> Proc | None:
        """After a daemon restart: reopen the container's handles; None if it is gone."""
        ...
    def release_pod(self, pod: Pod) -> None:
        """Everything the pod itself holds (the utility VM); idempotent."""
        ...


def _system(c: Ctr) -> SystemHandle:
    if c.system is None:
        raise MonitorLost(f"container {c.id}: its HCS compute system is gone")
    return c.system


def _job(c: Ctr) -> int:
    if c.job is None:
        raise MonitorLost(f"container {c.id}: its job object is gone")
    return c.job


def _layers(c: Ctr) -> tuple[str, ...]:
    layers = c.spec.rootfs.layers
    if not layers:
        raise InvalidSpec("rootfs.layers", "a Windows container needs at least its base layer")
    return layers


# ---------------------------------------------------------------- HCS (process isolation and Hyper-V)


class HcsEngine:
    def __init__(self, hcs: HcsApi, layers: LayerMounter, namespaces: NamespaceManager | None,
                 cfg: EngineConfig, resolve: Callable[[str], str]) -> None:
        self._hcs = hcs
        self._layers = layers
        self._namespaces = namespaces
        self._cfg = cfg
        self._resolve = resolve

    def _parents(self, c: Ctr) -> tuple[S.Layer, ...]:
        # RootfsSpec lists layers lowest first (like Linux); HCS wants the immediate parent first.
        return tuple(S.Layer(self._layers.layer_id(p), p) for p in reversed(_layers(c)))

    def _document(self, pod: Pod, c: Ctr, parents: tuple[S.Layer, ...], volume: str) -> S.ComputeSystem:
        if pod.isolation is Isolation.HYPERV:
            return ocimap.hosted_document(c.oci, parents, f"C:\\c\\{c.lun or 1}", self._cfg.host, pod.uvm_id,
                                          self._cfg.uvm, owner=self._cfg.owner, resolve=self._resolve)
        return ocimap.container_document(c.oci, ocimap.MountedLayers(parents, volume), self._cfg.host,
                                         owner=self._cfg.owner, resolve=self._resolve)

    def validate(self, pod: Pod, c: Ctr) -> None:
        self._document(pod, c, self._parents(c), PLACEHOLDER_VOLUME)
        ocimap.process_parameters(c.oci.get("process") or {}, stdin=c.spec.stdio.stdin)

    def create(self, pod: Pod, c: Ctr, save: Callable[[], None]) -> None:
        parents = self._parents(c)
        base = _layers(c)[0]
        layer_mount.create_scratch(c.spec.rootfs.scratch, base)
        size = _sandbox_size(c.oci)
        if size:
            self._layers.expand_scratch(c.spec.rootfs.scratch, size)
        if pod.isolation is Isolation.HYPERV:
            self._attach_to_uvm(pod, c, parents, base, save)
        else:
            c.volume = self._layers.mount(c.spec.rootfs.scratch, [p.path for p in parents])
            c.mounted = True
            save()
        doc = json.dumps(S.to_json(self._document(pod, c, parents, c.volume)))
        c.system = self._hcs.create_system(c.id, doc, self._cfg.create_timeout_ms)
        try:
            # Cached like hcsshim does; also proves the new system answers.
            self._hcs.system_properties(c.system, "{}")
        except BaseException:
            self._kill_system(c.system)
            self._hcs.close_system(c.system)
            c.system = None
            raise

    def start(self, c: Ctr) -> Proc:
        system = _system(c)
        self._hcs.start_system(system, self._cfg.create_timeout_ms)
        params = ocimap.process_parameters(c.oci.get("process") or {}, stdin=c.spec.stdio.stdin)
        return HcsProc(self._hcs, self._hcs.create_process(_system(c), json.dumps(S.to_json(params)),
                                                           self._cfg.create_timeout_ms))

    def exec(self, c: Ctr, process: dict[str, Any], stdin: bool) -> Proc:
        params = ocimap.process_parameters(process, stdin=stdin, where="exec")
        return HcsProc(self._hcs, self._hcs.create_process(_system(c), json.dumps(S.to_json(params)),
                                                           self._cfg.create_timeout_ms))

    def after_exit(self, c: Ctr) -> None:
        if c.system is not None:
            self._stop_system(c.system)

    def _stop_system(self, system: SystemHandle) -> None:
        """Shut down (<= 30 s), else terminate (<= 30 s). Already stopped is success."""
        try:
            self._hcs.shutdown_system(system, STOP_TIMEOUT_MS)
            return
        except HcsError as e:
            if e.already_gone:
                return
            log.warning("%s: shutdown failed (%s); terminating", system.name, e)
        self._kill_system(system)

    def _kill_system(self, system: SystemHandle) -> None:
        try:
            self._hcs.terminate_system(system, STOP_TIMEOUT_MS)
        except HcsError as e:
            if not e.already_gone:
                raise

    def destroy(self, pod: Pod, c: Ctr) -> None:
        if c.system is not None:
            self._kill_system(c.system)
            self._hcs.close_system(c.system)
            c.system = None
        if c.mounted:
            self._layers.unmount(c.spec.rootfs.scratch)
            c.mounted = False
            c.volume = ""
        if pod.isolation is Isolation.HYPERV:
            self._detach_from_uvm(pod, c)

    def stats(self, c: Ctr) -> S.Statistics:
        query = json.dumps(S.to_json(S.PropertyQuery((S.PropertyType.STATISTICS,))))
        props = S.Properties.parse(json.loads(self._hcs.system_properties(_system(c), query)))
        return props.statistics or S.Statistics()

    def update(self, c: Ctr, resources: dict[str, Any]) -> None:
        for request in ocimap.update_requests(resources, self._cfg.host):
            self._hcs.modify_system(_system(c), json.dumps(S.to_json(request)))

    def reattach(self, pod: Pod, c: Ctr) -> Proc | None:
        try:
            c.system = self._hcs.open_system(c.id)
        except HcsError as e:
            if e.hr in (_abi.HResult.SYSTEM_NOT_FOUND, 0xC037010E):
                return None
            raise
        if c.pid is None:
            return None
        try:
            return HcsProc.reopened(self._hcs, self._hcs.open_process(c.system, c.pid), c.pid)
        except HcsError:
            return None

    # ------------------------------------------------------------- the utility VM

    def _ensure_uvm(self, pod: Pod, base: str, save: Callable[[], None]) -> SystemHandle:
        if pod.uvm is not None:
            return pod.uvm
        pod.uvm_id = pod.uvm_id or f"{pod.id}@vm"
        pod.stopping = False
        pod.uvm_scratch = os.path.join(self._cfg.uvm_dir, pod.id, layer_mount.SCRATCH_NAME)
        layer_mount.create_uvm_scratch(pod.uvm_scratch, base)
        self._hcs.grant_vm_access(pod.uvm_id, pod.uvm_scratch)
        files = os.path.join(base, "UtilityVM", "Files")
        doc = ocimap.uvm_document(files, pod.uvm_scratch, self._cfg.uvm, owner=self._cfg.owner)
        uvm = self._hcs.create_system(pod.uvm_id, json.dumps(S.to_json(doc)), self._cfg.create_timeout_ms)
        pod.uvm, pod.uvm_created = uvm, True
        save()
        try:
            self._hcs.start_system(uvm, self._cfg.create_timeout_ms)
            self._add_network_adapters(pod, uvm)
        except BaseException:
            self.release_pod(pod)
            raise
        return uvm

    def _add_network_adapters(self, pod: Pod, uvm: SystemHandle) -> None:
        ns = pod.spec.windows.network_namespace if pod.spec.windows else None
        if not ns or self._namespaces is None:
            return
        for ep in self._namespaces.endpoints(ns):
            request = ocimap.network_adapter_request(ep.id, ep.mac, add=True)
            self._hcs.modify_system(uvm, json.dumps(S.to_json(request)))

    def _attach_to_uvm(self, pod: Pod, c: Ctr, parents: tuple[S.Layer, ...], base: str,
                       save: Callable[[], None]) -> None:
        with pod.lock:
            uvm = self._ensure_uvm(pod, base, save)
            vhd = os.path.join(c.spec.rootfs.scratch, layer_mount.SCRATCH_NAME)
            c.lun = pod.next_lun
            pod.next_lun += 1
            self._hcs.grant_vm_access(pod.uvm_id, vhd)
            self._hcs.modify_system(uvm, json.dumps(S.to_json(ocimap.scsi_attachment_request(0, c.lun, vhd, add=True))))
            save()
            shares = []
            for layer in parents:
                if pod.share_refs.get(layer.id, 0) == 0:
                    request = ocimap.vsmb_share_request(ocimap.layer_share(layer), add=True)
                    self._hcs.modify_system(uvm, json.dumps(S.to_json(request)))
                pod.share_refs[layer.id] = pod.share_refs.get(layer.id, 0) + 1
                shares.append(layer.id)
                c.shares = tuple(shares)
                save()

    def _detach_from_uvm(self, pod: Pod, c: Ctr) -> None:
        with pod.lock:
            uvm = pod.uvm
            for share in c.shares:
                refs = pod.share_refs.get(share, 0) - 1
                if refs <= 0:
                    pod.share_refs.pop(share, None)
                    if uvm is not None:
                        layer = S.Layer(share, "")
                        self._modify_quiet(uvm, ocimap.vsmb_share_request(ocimap.layer_share(layer), add=False))
                else:
                    pod.share_refs[share] = refs
            c.shares = ()
            if c.lun and uvm is not None:
                vhd = os.path.join(c.spec.rootfs.scratch, layer_mount.SCRATCH_NAME)
                self._modify_quiet(uvm, ocimap.scsi_attachment_request(0, c.lun, vhd, add=False))
            c.lun = 0

    def _modify_quiet(self, uvm: SystemHandle, request: S.ModifySettingRequest) -> None:
        try:
            self._hcs.modify_system(uvm, json.dumps(S.to_json(request)))
        except HcsError as e:
            # A stopped utility VM has nothing attached any more.
            if not e.already_gone and e.hr != _abi.HResult.INVALID_STATE:
                raise

    def release_pod(self, pod: Pod) -> None:
        if pod.uvm is None and pod.uvm_created:
            try:
                pod.uvm = self._hcs.open_system(pod.uvm_id)
            except HcsError as e:
                if not e.already_gone:
                    raise
                pod.uvm_created = False
        if pod.uvm is not None:
            pod.stopping = True
            self._stop_system(pod.uvm)
            if pod.uvm_watcher is not None and pod.uvm_watcher is not threading.current_thread():
                pod.uvm_watcher.join(30)
            self._hcs.close_system(pod.uvm)
            pod.uvm = None
            pod.uvm_created = False
        if pod.uvm_scratch:
            shutil.rmtree(os.path.dirname(pod.uvm_scratch), ignore_errors=True)
            pod.uvm_scratch = ""

    def reopen_uvm(self, pod: Pod) -> bool:
        """After a restart: True if the pod's utility VM is still there."""
        if not pod.uvm_created:
            return True
        try:
            pod.uvm = self._hcs.open_system(pod.uvm_id)
        except HcsError as e:
            if e.already_gone:
                return False
            raise
        return True


def _sandbox_size(oci: dict[str, Any]) -> int:
    storage = ((oci.get("windows") or {}).get("resources") or {}).get("storage") or {}
    size = storage.get("sandboxSize") or 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidSpec("windows.resources.storage.sandboxSize", f"must be a byte count, not {size!r}")
    return size


# ---------------------------------------------------------------- HostProcess (job objects)


class JobEngine:
    def __init__(self, jobs: JobApi, layers: LayerMounter, cfg: EngineConfig) -> None:
        self._jobs = jobs
        self._layers = layers
        self._cfg = cfg

    def validate(self, pod: Pod, c: Ctr) -> None:
        process = c.oci.get("process") or {}
        user = str(((process.get("user") or {}).get("username")) or "")
        if user.lower() not in SYSTEM_ACCOUNTS:
            raise Unsupported(f"process.user.username: HostProcess containers run as the runtime's account "
                              f"(NT AUTHORITY\\SYSTEM) in this version; {user!r} is not supported yet")
        if process.get("terminal"):
            raise Unsupported("process.terminal: HostProcess containers have no console (TTY)")
        jobobject.limits(_resources(c.oci), self._cfg.host.logical_processors)
        ocimap.command_line(process)
        ocimap.environment(process.get("env") or [])
        _layers(c)

    def create(self, pod: Pod, c: Ctr, save: Callable[[], None]) -> None:
        parents = [p for p in reversed(_layers(c))]
        layer_mount.create_scratch(c.spec.rootfs.scratch, _layers(c)[0])
        c.volume = self._layers.mount(c.spec.rootfs.scratch, parents)
        c.mounted = True
        c.job_name = f"JobContainer_{c.id}"
        save()
        c.job = self._jobs.create(c.job_name)
        self._jobs.set_limits(c.job, jobobject.limits(_resources(c.oci), self._cfg.host.logical_processors))

    def _spec(self, c: Ctr, process: dict[str, Any], stdin: bool) -> JobProcessSpec:
        env = ocimap.environment(process.get("env") or [])
        env[jobobject.MOUNT_POINT_ENV] = c.volume
        return JobProcessSpec(command_line=ocimap.command_line(process), cwd=str(process.get("cwd") or c.volume),
                              env=env, stdin=stdin)

    def start(self, c: Ctr) -> Proc:
        spawned = self._jobs.spawn(_job(c), self._spec(c, c.oci.get("process") or {}, c.spec.stdio.stdin))
        return JobProc(self._jobs, _job(c), spawned, main=True)

    def exec(self, c: Ctr, process: dict[str, Any], stdin: bool) -> Proc:
        job = _job(c)
        return JobProc(self._jobs, job, self._jobs.spawn(job, self._spec(c, process, stdin)), main=False)

    def after_exit(self, c: Ctr) -> None:
        if c.job is not None:
            self._jobs.terminate(c.job, 0)

    def destroy(self, pod: Pod, c: Ctr) -> None:
        if c.job is None and c.job_name:
            c.job = self._jobs.open(c.job_name)
        if c.job is not None:
            self._jobs.terminate(c.job, 1)
            self._jobs.close(c.job)
            c.job = None
        if c.mounted:
            self._layers.unmount(c.spec.rootfs.scratch)
            c.mounted = False

    def stats(self, c: Ctr) -> S.Statistics:
        acct = self._jobs.accounting(_job(c))
        return S.Statistics(total_runtime_100ns=acct.cpu_100ns)

    def update(self, c: Ctr, resources: dict[str, Any]) -> None:
        self._jobs.set_limits(_job(c), jobobject.limits(resources, self._cfg.host.logical_processors))

    def reattach(self, pod: Pod, c: Ctr) -> Proc | None:
        c.job = self._jobs.open(c.job_name) if c.job_name else None
        if c.job is None or self._jobs.accounting(c.job).active_processes == 0:
            return None
        return _JobWatch(self._jobs, c.job, c.pid or 0)

    def release_pod(self, pod: Pod) -> None:
        pass


class _JobWatch(JobProc):
    """A HostProcess container found running after a restart: its exit is seen when the job empties."""

    def __init__(self, jobs: JobApi, job: int, pid: int) -> None:
        super().__init__(jobs, job, jobobject.SpawnedProcess(pid, None, None, None), main=True)

    def wait(self, timeout_ms: int) -> int | None:
        deadline = time.monotonic() + timeout_ms / 1000
        while self._jobs.accounting(self._job).active_processes:
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return 255      # the exit code was lost with the old daemon's process handle


def _resources(oci: dict[str, Any]) -> dict[str, Any]:
    res = (oci.get("windows") or {}).get("resources") or {}
    if not isinstance(res, dict):
        raise InvalidSpec("windows.resources", "must be an object")
    return res
