"""WindowsBackend: runtime.base.Backend on the Host Compute Service.

One instance serves one runtime handler (containerd's names:
`runhcs-wcow-process`, `runhcs-wcow-hypervisor`); a pod is HostProcess when its
WindowsSandboxSpec says so. Per pod:

- process isolation: no pause container (the HCN namespace, made by the
  daemon's network layer, outlives containers); each container is its own
  compute system joined to the namespace;
- Hyper-V: a utility VM per pod, created with the first container because it
  boots from that container's base layer; containers are hosted systems;
- HostProcess: a job object per container, host network.

Containers follow §1.4 of the Windows brief: CreateContainer mounts the layers
and creates the system, StartContainer starts it and creates the main process,
a watcher thread per container waits for the exit (HcsWaitForProcessExit with
a finite timeout so the daemon can close), then shuts the system down.
StopContainer sends CtrlShutdown from a background thread (servercore blocks
the call), waits the grace period, then terminates. Everything is recorded in
the state store so a restarted daemon reopens its systems (`recover`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runtime import oci
from runtime.base import (REASON_COMPLETED, REASON_ERROR, REASON_START_ERROR, ContainerSpec, ContainerState,
                          ContainerStats, ContainerStatus, EventKind, ExecResult, ExecSpec, HandlerFeatures,
                          InvalidSpec, IOSession, MonitorLost, ObjectNotFound, RecoveredSandbox, RuntimeEvent,
                          RuntimeFailure, SandboxSpec, SandboxState, SandboxStats, SandboxStatus, StreamKind,
                          Unsupported, WrongState)
from runtime.windows import layer_mount, ocimap
from runtime.windows import schema as S
from runtime.windows.engines import Engine, EngineConfig, HcsEngine, JobEngine
from runtime.windows.hcs import HcsApi, HcsError
from runtime.windows.jobobject import HOST_PROCESS_ANNOTATION, JobApi
from runtime.windows.layer_mount import LayerMounter
from runtime.windows.network import NamespaceManager
from runtime.windows.procs import Proc
from runtime.windows.sessions import AttachSession, ExecSession, signed32
from runtime.windows.state import Ctr, Isolation, Pod, StateStore
from runtime.windows.stdio import Broadcast, Collector, HandleIO, LogSinkFactory, OutputPump

log = logging.getLogger(__name__)

T = TypeVar("T")

HANDLER_PROCESS = "runhcs-wcow-process"
HANDLER_HYPERV = "runhcs-wcow-hypervisor"
KILL_WAIT_S = 30.0
START_ERROR_CODE = 128
LOST_EXIT_CODE = 255

# POSIX signal numbers kubelet/crictl send -> the console control event a Windows process understands.
SIGNALS = {15: S.ProcessSignal.CTRL_SHUTDOWN, 2: S.ProcessSignal.CTRL_C, 1: S.ProcessSignal.CTRL_CLOSE,
           3: S.ProcessSignal.CTRL_BREAK}
SIGKILL = 9


@dataclass(frozen=True)
class WindowsBackendConfig:
    state_dir: str                      # pod records and utility VM disks of this instance
    owner: str = "cri-shim"             # HCS Owner: which systems are this instance's
    hyperv: bool = False                # this handler isolates pods in utility VMs
    host_processors: int = field(default_factory=lambda: os.cpu_count() or 1)
    uvm: ocimap.UtilityVmConfig = field(default_factory=ocimap.UtilityVmConfig)
    exit_poll_ms: int = 500             # bound of each exit wait, so close() returns quickly
    io_drain_s: float = 2.0             # after an exit, how long the log may still drain
    operation_timeout_ms: int = 240_000  # create/start of a system (hcsshim's default); cancelled after


@dataclass
class WindowsPlatform:
    """The native APIs, injected: real DLL bindings on Windows, fakes in tests/windows."""

    hcs: HcsApi
    layers: LayerMounter
    jobs: JobApi
    hcs_io: HandleIO                    # reads HCS stdio HANDLEs
    job_io: HandleIO                    # reads HostProcess stdio descriptors
    log_sink: LogSinkFactory            # the CRI log writer the Linux runtime uses too
    namespaces: NamespaceManager | None = None
    resolve_path: Callable[[str], str] = lambda p: p
    clock: Callable[[], int] = time.time_ns


class WindowsBackend:
    def __init__(self, name: str, config: WindowsBackendConfig, platform: WindowsPlatform) -> None:
        self.name = name
        self.features = HandlerFeatures()
        self._cfg = config
        self._p = platform
        self._store = StateStore(os.path.join(config.state_dir, "pods"))
        engine_cfg = EngineConfig(owner=config.owner, host=ocimap.HostInfo(config.host_processors),
                                  uvm=config.uvm, uvm_dir=os.path.join(config.state_dir, "uvm"),
                                  create_timeout_ms=config.operation_timeout_ms)
        self._hcs_engine = HcsEngine(platform.hcs, platform.layers, platform.namespaces, engine_cfg,
                                     platform.resolve_path)
        self._job_engine = JobEngine(platform.jobs, platform.layers, engine_cfg)
        self._pods: dict[str, Pod] = {}
        self._sinks: list[Callable[[RuntimeEvent], None]] = []
        self._save_lock = threading.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------- plumbing

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        self._bind_loop()
        try:
            return await asyncio.to_thread(fn, *args)
        except RuntimeFailure:
            raise
        except OSError as e:
            raise RuntimeFailure(f"{getattr(fn, '__name__', 'call')}: {e}") from e

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _engine(self, pod: Pod) -> Engine:
        return self._job_engine if pod.isolation is Isolation.HOST_PROCESS else self._hcs_engine

    def _io(self, pod: Pod) -> HandleIO:
        return self._p.job_io if pod.isolation is Isolation.HOST_PROCESS else self._p.hcs_io

    def _save(self, pod: Pod) -> None:
        with self._save_lock:
            if pod.id in self._pods:
                self._store.save(pod)

    def _pod(self, sandbox_id: str) -> Pod:
        pod = self._pods.get(sandbox_id)
        if pod is None:
            raise ObjectNotFound(f"sandbox {sandbox_id} not found")
        return pod

    def _find(self, container_id: str) -> tuple[Pod, Ctr] | None:
        for pod in self._pods.values():
            c = pod.containers.get(container_id)
            if c is not None:
                return pod, c
        return None

    def _ctr(self, container_id: str) -> tuple[Pod, Ctr]:
        found = self._find(container_id)
        if found is None:
            raise ObjectNotFound(f"container {container_id} not found")
        return found

    def _emit(self, event: RuntimeEvent) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                log.exception("event sink failed")

    # ------------------------------------------------------------- sandboxes

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxStatus:
        self._bind_loop()
        win = spec.windows
        if win is None:
            raise InvalidSpec("windows", "a Windows pod needs its Windows settings (WindowsSandboxSpec)")
        if spec.id in self._pods:
            raise WrongState(f"sandbox {spec.id} already exists")
        if win.host_process:
            if win.network_namespace:
                raise InvalidSpec("windows.network_namespace", "HostProcess pods use the host network; "
                                                               "no HCN namespace may be given")
            if win.hyperv or self._cfg.hyperv:
                raise Unsupported("HostProcess pods cannot run in a Hyper-V utility VM (handler "
                                  f"{self.name}); use {HANDLER_PROCESS}")
            isolation = Isolation.HOST_PROCESS
        else:
            isolation = Isolation.HYPERV if (win.hyperv or self._cfg.hyperv) else Isolation.PROCESS
        if win.network_namespace and not ocimap.GUID_RE.match(win.network_namespace):
            raise InvalidSpec("windows.network_namespace", f"{win.network_namespace!r} is not an HCN namespace GUID")
        pod = Pod(spec=spec, isolation=isolation, uvm_id=f"{spec.id}@vm" if isolation is Isolation.HYPERV else "")
        self._pods[spec.id] = pod
        try:
            await self._blocking(self._save, pod)
        except BaseException:
            del self._pods[spec.id]
            raise
        return self._sandbox_status(pod)

    def _sandbox_status(self, pod: Pod) -> SandboxStatus:
        ns = pod.spec.windows.network_namespace if pod.spec.windows else None
        return SandboxStatus(id=pod.id, state=pod.state, namespaces={"network": ns} if ns else {})

    async def sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        return self._sandbox_status(self._pod(sandbox_id))

    async def stop_sandbox(self, sandbox_id: str, timeout: float) -> None:
        pod = self._pods.get(sandbox_id)
        if pod is None:
            return
        running = [c.id for c in pod.containers.values() if c.state is ContainerState.RUNNING]
        await asyncio.gather(*(self.stop_container(cid, timeout) for cid in running))
        async with self._lock(sandbox_id):
            pod.state = SandboxState.NOTREADY
            pod.stopping = True
            # Hyper-V: the utility VM is the sandbox; nothing runs in it any more.
            await self._blocking(self._engine(pod).release_pod, pod)
            await self._blocking(self._save, pod)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        pod = self._pods.get(sandbox_id)
        if pod is None:
            return
        await self.stop_sandbox(sandbox_id, 0)
        for cid in list(pod.containers):
            await self.delete_container(cid)
        async with self._lock(sandbox_id):
            await self._blocking(self._engine(pod).release_pod, pod)
            with self._save_lock:
                self._pods.pop(sandbox_id, None)
                self._store.delete(sandbox_id)

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStats:
        pod = self._pod(sandbox_id)
        stats: dict[str, ContainerStats] = {}
        for c in list(pod.containers.values()):
            if c.state is ContainerState.RUNNING:
                try:
                    stats[c.id] = await self.container_stats(c.id)
                except (ObjectNotFound, WrongState):
                    continue
        def total(attr: str) -> int | None:
            values = [getattr(s, attr) for s in stats.values() if getattr(s, attr) is not None]
            return sum(values) if values else None
        return SandboxStats(timestamp_ns=self._p.clock(), cpu_usage_ns=total("cpu_usage_ns"),
                            memory_working_set_bytes=total("memory_working_set_bytes"),
                            memory_usage_bytes=total("memory_usage_bytes"), containers=stats)

    # ------------------------------------------------------------- containers

    async def create_container(self, spec: ContainerSpec) -> ContainerStatus:
        self._bind_loop()
        pod = self._pod(spec.sandbox_id)
        if pod.state is not SandboxState.READY:
            raise WrongState(f"sandbox {pod.id} is not ready")
        if self._find(spec.id) is not None:
            raise WrongState(f"container {spec.id} already exists")
        try:
            spec_doc = oci.read(spec.bundle_dir)
        except ValueError as e:
            raise InvalidSpec("config.json", str(e)) from None
        _check_host_process(pod, spec_doc)
        if spec.rootfs.readonly:
            raise Unsupported("rootfs.readonly: Windows containers cannot have a read-only root filesystem")
        c = Ctr(spec=spec, oci=spec_doc, created_at=self._p.clock())
        engine = self._engine(pod)
        async with self._lock(spec.id):
            await self._blocking(engine.validate, pod, c)
            with self._save_lock:
                pod.containers[c.id] = c
            try:
                await self._blocking(engine.create, pod, c, lambda: self._save(pod))
            except BaseException:
                await self._undo_create(pod, c, engine)
                raise
            await self._blocking(self._save, pod)
        self._watch_uvm(pod)
        return c.status()

    def _watch_uvm(self, pod: Pod) -> None:
        """Hyper-V: the utility VM is the pod's monitor; if it dies, the pod is lost (MONITOR_LOST)."""
        uvm = pod.uvm
        if uvm is None or (pod.uvm_watcher is not None and pod.uvm_watcher.is_alive()):
            return

        def watch() -> None:
            while not self._closing.is_set():
                try:
                    if self._p.hcs.wait_system_exit(uvm, self._cfg.exit_poll_ms) is not None:
                        break
                except RuntimeFailure:
                    return          # the handle was closed: the pod was released
            loop = self._loop
            if loop is not None and not self._closing.is_set() and not pod.stopping:
                try:
                    loop.call_soon_threadsafe(self._uvm_lost, pod)
                except RuntimeError:
                    pass

        pod.uvm_watcher = threading.Thread(target=watch, name=f"pod-{pod.id[:12]}-uvm", daemon=True)
        pod.uvm_watcher.start()

    def _uvm_lost(self, pod: Pod) -> None:
        if pod.stopping or pod.id not in self._pods:
            return
        log.error("the utility VM of pod %s exited unexpectedly", pod.id)
        pod.state = SandboxState.NOTREADY
        try:
            self._save(pod)
        except OSError as e:
            log.error("cannot record the loss of pod %s: %s", pod.id, e)
        self._emit(RuntimeEvent(EventKind.MONITOR_LOST, pod.id, None))

    async def _undo_create(self, pod: Pod, c: Ctr, engine: Engine) -> None:
        try:
            await self._blocking(engine.destroy, pod, c)
        except Exception:
            log.exception("cleanup after a failed create of %s", c.id)
            return      # keep the record: recover() or RemoveContainer retries the release
        with self._save_lock:
            pod.containers.pop(c.id, None)
        await self._blocking(self._save, pod)

    async def start_container(self, container_id: str) -> ContainerStatus:
        pod, c = self._ctr(container_id)
        async with self._lock(container_id):
            if c.state is not ContainerState.CREATED:
                raise WrongState(f"container {container_id} is {c.state.value}, not created")
            engine = self._engine(pod)
            c.log = self._p.log_sink(c.spec.stdio.log_path)
            try:
                await self._blocking(c.log.open)
                proc = await self._blocking(engine.start, c)
            except BaseException as e:
                await self._start_failed(pod, c, engine, e)
                raise
            self._running(pod, c, proc)
            await self._blocking(self._save, pod)
        return c.status()

    async def _start_failed(self, pod: Pod, c: Ctr, engine: Engine, error: BaseException) -> None:
        try:
            await self._blocking(engine.after_exit, c)
        except Exception:
            log.exception("stopping %s after a failed start", c.id)
        if c.log is not None:
            c.log.close_file()
        c.state, c.exit_code, c.reason = ContainerState.EXITED, START_ERROR_CODE, REASON_START_ERROR
        c.message = getattr(error, "message", str(error))
        c.finished_at = self._p.clock()
        c.exited.set()
        await self._blocking(self._save, pod)

    def _running(self, pod: Pod, c: Ctr, proc: Proc, *, pumps: bool = True) -> None:
        c.proc, c.pid = proc, proc.pid
        c.state = ContainerState.RUNNING
        if not c.started_at:
            c.started_at = self._p.clock()
        io = self._io(pod)
        if pumps:
            for handle, kind in ((proc.stdout, StreamKind.STDOUT), (proc.stderr, StreamKind.STDERR)):
                if handle is not None:
                    c.pumps.append(OutputPump(io, handle, kind, c.log, c.listeners,
                                              f"ctr-{c.id[:12]}-{kind.name.lower()}").start())
            if proc.stdin is not None:
                if c.spec.stdio.stdin:
                    c.stdin = proc.stdin
                else:
                    io.close(proc.stdin)
        c.watcher = threading.Thread(target=self._watch, args=(pod, c, proc), name=f"ctr-{c.id[:12]}-exit",
                                     daemon=True)
        c.watcher.start()

    def _watch(self, pod: Pod, c: Ctr, proc: Proc) -> None:
        """The exit of the main process, then the stop of what is left (§1.4 "after init exits")."""
        code: int | None = None
        while code is None:
            if self._closing.is_set():
                return
            try:
                code = proc.wait(self._cfg.exit_poll_ms)
            except RuntimeFailure as e:
                if self._closing.is_set():
                    return
                log.warning("%s: waiting for the exit failed: %s", c.id, e)
                code = LOST_EXIT_CODE
        for pump in c.pumps:
            pump.join(self._cfg.io_drain_s)
        try:
            self._engine(pod).after_exit(c)
        except Exception:
            log.exception("%s: stopping the container after its exit failed", c.id)
        loop = self._loop
        if loop is not None and not self._closing.is_set():
            try:
                loop.call_soon_threadsafe(self._exited, pod, c, code)
            except RuntimeError:
                pass

    def _exited(self, pod: Pod, c: Ctr, code: int, message: str = "") -> None:
        if c.state is ContainerState.EXITED:
            return
        c.state = ContainerState.EXITED
        c.exit_code = signed32(code)
        c.reason = REASON_COMPLETED if code == 0 else REASON_ERROR
        c.message = message
        c.finished_at = self._p.clock()
        if c.log is not None:
            c.log.close_file()
        self._close_stdin(pod, c)
        c.exited.set()
        try:
            self._save(pod)
        except OSError as e:
            log.error("cannot record the exit of %s: %s", c.id, e)
        self._emit(RuntimeEvent(EventKind.EXITED, pod.id, c.id, c.status()))

    def _close_stdin(self, pod: Pod, c: Ctr) -> None:
        with c.stdin_lock:
            stdin, c.stdin = c.stdin, None
            if stdin is not None:
                try:
                    self._io(pod).close(stdin)
                except OSError:
                    pass

    def _write_stdin(self, pod: Pod, c: Ctr, data: bytes) -> None:
        # Under the lock: a handle value closed by the exit path may already name another open file.
        with c.stdin_lock:
            if c.stdin is None:
                raise BrokenPipeError(f"the stdin of container {c.id} is closed")
            self._io(pod).write(c.stdin, data)

    async def kill_container(self, container_id: str, signal: int) -> None:
        pod, c = self._ctr(container_id)
        if c.state is not ContainerState.RUNNING or c.proc is None:
            raise WrongState(f"container {container_id} is not running")
        if signal == SIGKILL:
            await self._blocking(c.proc.terminate)
            return
        ctrl = SIGNALS.get(signal)
        if ctrl is None:
            raise Unsupported(f"signal {signal}: Windows containers understand SIGTERM, SIGINT, SIGHUP, "
                              "SIGQUIT (console control events) and SIGKILL")
        self._signal_in_background(c, c.proc, ctrl)

    def _signal_in_background(self, c: Ctr, proc: Proc, ctrl: S.ProcessSignal) -> None:
        # servercore blocks HcsSignalProcess until the process dies: never on the caller's path.
        def send() -> None:
            try:
                proc.signal(ctrl)
            except RuntimeFailure as e:
                log.info("%s: %s not delivered: %s", c.id, ctrl.value, e)
        threading.Thread(target=send, name=f"ctr-{c.id[:12]}-signal", daemon=True).start()

    async def stop_container(self, container_id: str, timeout: float) -> ContainerStatus:
        pod, c = self._ctr(container_id)
        if c.state is not ContainerState.RUNNING or c.proc is None:
            return c.status()
        proc = c.proc
        if timeout > 0:
            self._signal_in_background(c, proc, SIGNALS.get(c.spec.stop_signal, S.ProcessSignal.CTRL_SHUTDOWN))
            if await _wait(c.exited, timeout):
                return c.status()
        await self._blocking(proc.terminate)
        if not await _wait(c.exited, KILL_WAIT_S):
            raise MonitorLost(f"container {container_id} did not exit {KILL_WAIT_S:.0f}s after it was terminated")
        return c.status()

    async def container_status(self, container_id: str) -> ContainerStatus:
        return self._ctr(container_id)[1].status()

    async def delete_container(self, container_id: str) -> None:
        found = self._find(container_id)
        if found is None:
            return
        pod, c = found
        async with self._lock(container_id):
            if c.state is ContainerState.RUNNING:
                raise WrongState(f"container {container_id} is running; stop it before removing it")
            await self._blocking(self._release, pod, c)
            with self._save_lock:
                pod.containers.pop(container_id, None)
            await self._blocking(self._save, pod)
        self._locks.pop(container_id, None)

    def _release(self, pod: Pod, c: Ctr) -> None:
        if c.watcher is not None and c.watcher is not threading.current_thread():
            c.watcher.join(self._cfg.exit_poll_ms / 1000 * 4 + KILL_WAIT_S)
        if c.proc is not None:
            c.proc.close()
            c.proc = None
        self._close_stdin(pod, c)
        self._engine(pod).destroy(pod, c)

    async def update_resources(self, container_id: str, resources: Mapping[str, Any]) -> None:
        pod, c = self._ctr(container_id)
        if c.state is not ContainerState.RUNNING and c.state is not ContainerState.CREATED:
            raise WrongState(f"container {container_id} is {c.state.value}")
        await self._blocking(self._engine(pod).update, c, dict(resources))

    async def reopen_log(self, container_id: str) -> None:
        _, c = self._ctr(container_id)
        if c.log is None:
            c.log = self._p.log_sink(c.spec.stdio.log_path)
        await self._blocking(c.log.reopen)
        if c.state is ContainerState.EXITED:
            c.log.close_file()

    # ------------------------------------------------------------- exec and attach

    def _exec_process(self, c: Ctr, spec: ExecSpec) -> dict[str, Any]:
        if not spec.args:
            raise InvalidSpec("cmd", "exec needs a command")
        base = dict(c.oci.get("process") or {})
        base.pop("commandLine", None)
        base.pop("consoleSize", None)
        base["args"] = list(spec.args)
        if spec.env is not None:
            base["env"] = list(spec.env)
        if spec.cwd is not None:
            base["cwd"] = spec.cwd
        base["terminal"] = spec.tty
        return base

    def _running_ctr(self, container_id: str) -> tuple[Pod, Ctr]:
        pod, c = self._ctr(container_id)
        if c.state is not ContainerState.RUNNING:
            raise WrongState(f"container {container_id} is not running")
        return pod, c

    async def exec_sync(self, container_id: str, spec: ExecSpec, timeout: float | None,
                        output_cap: int) -> ExecResult:
        pod, c = self._running_ctr(container_id)
        process = self._exec_process(c, spec)
        proc = await self._blocking(self._engine(pod).exec, c, process, False)
        try:
            return await self._blocking(self._exec_sync_wait, pod, c, proc, timeout, output_cap)
        finally:
            await self._blocking(proc.close)

    def _exec_sync_wait(self, pod: Pod, c: Ctr, proc: Proc, timeout: float | None, cap: int) -> ExecResult:
        io = self._io(pod)
        collector = Collector(cap)
        pumps = []
        for handle, kind in ((proc.stdout, StreamKind.STDOUT), (proc.stderr, StreamKind.STDERR)):
            if handle is not None:
                b = Broadcast()
                b.add(collector)
                pumps.append(OutputPump(io, handle, kind, None, b, f"exec-{c.id[:12]}-{kind.name.lower()}").start())
        if proc.stdin is not None:
            io.close(proc.stdin)
        deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
        code: int | None = None
        while code is None:
            left = self._cfg.exit_poll_ms if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            code = proc.wait(min(left, self._cfg.exit_poll_ms))
            if code is None and deadline is not None and time.monotonic() >= deadline:
                break
        timed_out = code is None
        if timed_out:
            proc.terminate()
            code = proc.wait(int(KILL_WAIT_S * 1000))
        for pump in pumps:
            pump.join(self._cfg.io_drain_s)
        return ExecResult(exit_code=signed32(code if code is not None else LOST_EXIT_CODE),
                          stdout=bytes(collector.data[StreamKind.STDOUT]),
                          stderr=bytes(collector.data[StreamKind.STDERR]), timed_out=timed_out)

    async def exec(self, container_id: str, spec: ExecSpec) -> IOSession:
        pod, c = self._running_ctr(container_id)
        process = self._exec_process(c, spec)
        proc = await self._blocking(self._engine(pod).exec, c, process, spec.stdin)
        return ExecSession(self._bind_loop(), self._io(pod), proc, stdout=spec.stdout, stderr=spec.stderr,
                           name=f"exec-{c.id[:12]}")

    async def attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool) -> IOSession:
        pod, c = self._running_ctr(container_id)
        proc = c.proc
        if proc is None:
            raise WrongState(f"container {container_id} is not running")
        streams = sum(1 for p in c.pumps if not p.done.is_set())
        write = close = None
        if stdin and c.stdin is not None:
            write = lambda data: self._write_stdin(pod, c, data)   # noqa: E731
            close = (lambda: self._close_attached_stdin(pod, c, proc)) if c.spec.stdio.stdin_once else None
        wanted = {k for k, on in ((StreamKind.STDOUT, stdout), (StreamKind.STDERR, stderr)) if on}
        return AttachSession(self._bind_loop(), c.listeners, streams, write, close,
                             lambda h, w: proc.resize(h, w), c.exited, lambda: c.exit_code, wanted=wanted)

    def _close_attached_stdin(self, pod: Pod, c: Ctr, proc: Proc) -> None:
        self._close_stdin(pod, c)
        try:
            proc.close_stdin()
        except RuntimeFailure as e:
            log.debug("close stdin of %s: %s", c.id, e)

    # ------------------------------------------------------------- stats

    async def container_stats(self, container_id: str) -> ContainerStats:
        pod, c = self._ctr(container_id)
        if c.state is not ContainerState.RUNNING:
            raise WrongState(f"container {container_id} is not running")
        st = await self._blocking(self._engine(pod).stats, c)
        used, inodes = await self._blocking(layer_mount.disk_usage, c.spec.rootfs.scratch)
        return ContainerStats(
            timestamp_ns=self._p.clock(),
            cpu_usage_ns=st.total_runtime_100ns * 100,
            memory_working_set_bytes=st.memory_private_working_set_bytes or None,
            memory_usage_bytes=st.memory_commit_bytes or None,
            writable_layer_mountpoint=c.spec.rootfs.scratch,
            writable_layer_bytes=used, writable_layer_inodes=inodes)

    # ------------------------------------------------------------- lifecycle of the backend

    def subscribe(self, sink: Callable[[RuntimeEvent], None]) -> None:
        self._sinks.append(sink)

    async def recover(self, known_sandboxes: list[str]) -> list[RecoveredSandbox]:
        self._bind_loop()
        records = await self._blocking(self._store.load_all)
        known = set(known_sandboxes)
        out = []
        for pod in records.values():
            if pod.id not in known:
                await self._discard(pod)
                continue
            self._pods[pod.id] = pod
            await self._reconnect(pod)
            out.append(RecoveredSandbox(self._sandbox_status(pod), tuple(c.status() for c in pod.containers.values())))
        await self._blocking(self._remove_orphans)
        return out

    async def _reconnect(self, pod: Pod) -> None:
        engine = self._engine(pod)
        alive = True
        if pod.isolation is Isolation.HYPERV:
            alive = await self._blocking(self._hcs_engine.reopen_uvm, pod)
        for c in list(pod.containers.values()):
            proc = await self._blocking(engine.reattach, pod, c) if alive else None
            if c.state is ContainerState.RUNNING:
                if proc is None:
                    self._exited(pod, c, LOST_EXIT_CODE, "the container was gone when the runtime restarted")
                    continue
                # The stdio pipes died with the old daemon: the log of this container stops here.
                c.log = self._p.log_sink(c.spec.stdio.log_path)
                self._running(pod, c, proc, pumps=False)
            elif proc is not None:
                await self._blocking(proc.close)
            if c.state is ContainerState.CREATED and c.system is None and pod.isolation is not Isolation.HOST_PROCESS:
                self._exited(pod, c, LOST_EXIT_CODE, "the container was gone when the runtime restarted")
        if not alive:
            pod.state = SandboxState.NOTREADY
            pod.uvm_created = False
        await self._blocking(self._save, pod)

    async def _discard(self, pod: Pod) -> None:
        """A pod the daemon no longer knows: release everything it held."""
        engine = self._engine(pod)
        self._pods[pod.id] = pod
        try:
            for c in list(pod.containers.values()):
                try:
                    proc = await self._blocking(engine.reattach, pod, c)
                    if proc is not None:
                        await self._blocking(proc.close)
                    await self._blocking(engine.destroy, pod, c)
                except RuntimeFailure as e:
                    log.error("releasing %s of a forgotten pod failed: %s", c.id, e)
            await self._blocking(engine.release_pod, pod)
        finally:
            with self._save_lock:
                self._pods.pop(pod.id, None)
                self._store.delete(pod.id)

    def _remove_orphans(self) -> None:
        """Systems with our Owner that no record names (a crash between create and record)."""
        ours = {c for p in self._pods.values() for c in p.containers} | {p.uvm_id for p in self._pods.values()}
        query = json.dumps({"Owners": [self._cfg.owner]})
        try:
            systems = S.parse_system_list(json.loads(self._p.hcs.enumerate_systems(query)))
        except (HcsError, ValueError) as e:
            log.warning("cannot list HCS systems to find orphans: %s", e)
            return
        for props in systems:
            if props.owner != self._cfg.owner or props.id in ours:
                continue
            log.warning("terminating orphaned HCS system %s", props.id)
            try:
                handle = self._p.hcs.open_system(props.id)
            except HcsError:
                continue
            try:
                self._p.hcs.terminate_system(handle, 30_000)
            except HcsError as e:
                if not e.already_gone:
                    log.error("cannot terminate orphan %s: %s", props.id, e)
            finally:
                self._p.hcs.close_system(handle)

    async def close(self) -> None:
        """Let go of every handle without stopping anything (daemon shutdown)."""
        self._closing.set()
        await self._blocking(self._close_all)

    def _close_all(self) -> None:
        for pod in list(self._pods.values()):
            for c in pod.containers.values():
                if c.watcher is not None:
                    c.watcher.join(self._cfg.exit_poll_ms / 1000 * 4)
                if c.proc is not None:
                    c.proc.close()
                    c.proc = None
                if c.system is not None:
                    self._p.hcs.close_system(c.system)
                    c.system = None
                if c.job is not None:
                    # No kill-on-close: the HostProcess container keeps running and is reopened by name.
                    self._p.jobs.close(c.job)
                    c.job = None
                self._close_stdin(pod, c)
                if c.log is not None:
                    c.log.close_file()
            if pod.uvm is not None:
                self._p.hcs.close_system(pod.uvm)
                pod.uvm = None


def _check_host_process(pod: Pod, spec: Mapping[str, Any]) -> None:
    """containerd's rule: every container of a HostProcess pod is HostProcess, and only those."""
    annotations = spec.get("annotations") or {}
    value = str(annotations.get(HOST_PROCESS_ANNOTATION, "false")).lower()
    if value not in ("true", "false"):
        raise InvalidSpec(f"annotations.{HOST_PROCESS_ANNOTATION}", f"must be true or false, not {value!r}")
    wanted = pod.isolation is Isolation.HOST_PROCESS
    if (value == "true") != wanted:
        raise InvalidSpec("windows_options.host_process",
                          f"the pod is {'' if wanted else 'not '}HostProcess but this container is "
                          f"{'' if value == 'true' else 'not '}: a pod and all its containers must agree")


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False
