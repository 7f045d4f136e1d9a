"""`LinuxBackend`: the native Linux runtime behind `runtime.base.Backend`.

The daemon-side half of the runtime. It never forks: pod shims are forked by
the zygote (an exec'd helper), and everything else is a request to a shim over
its unix socket, bounded by a timeout. State that must survive the daemon lives
with the shims and in files under `<state>/pods/<sandbox id>/`:

    sock, shim.pid, pod.json               the shim, its socket and its configuration (logs: <state>/zygote.log)
    ns/ipc, ns/uts, shm                    pinned namespaces and the pod's /dev/shm (mounts)
    containers/<id>/state.json, exit.json  written by the shim, read back if the shim died

A restarted daemon calls `recover()`, which reconnects to live shims and, for
a shim that died, reports its containers from those files and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import base
from runtime.linux import cgroups, host
from runtime.linux import seccomp
from runtime.linux import protocol as proto
from runtime.linux import protocol_aio as aio
from runtime.linux.sessions import AttachSession, ExecSession
from runtime.linux import shim_runc
from runtime.linux.shim import cleanup_pod_mounts, pod_paths
from runtime.linux.spec import SpecError, read_spec
from runtime.linux.shim_client import ShimClient, Zygote, pid_alive, wait_pid_gone

log = logging.getLogger(__name__)

UNIX_PATH_MAX = 107
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SANDBOX_ID = 64         # the daemon's ids are 64 hex characters; the shim socket path must fit sun_path
EXIT_UNKNOWN = 255          # containerd's "unknown exit code" for a container whose monitor vanished
STOP_KILL_WAIT = 10.0
DEATH_CONFIRM = 2.0         # a closed event stream + the shim's pid gone within this = the shim died       # after SIGKILL of every process, how long an exit may take to be reaped


@dataclass
class Pod:
    id: str
    dir: str
    client: ShimClient
    pid: int = 0
    namespaces: dict[str, str] = field(default_factory=dict)
    lost: str = ""                       # why the shim is considered gone ("" = alive)
    removing: bool = False               # the shim is being shut down on purpose
    events: asyncio.Task[None] | None = None


KSM_MODES = ("off", "mark", "start")


class LinuxBackend:
    """Pods and containers with namespaces, cgroups and overlayfs, held by one pod shim per pod."""

    name = "native"

    def __init__(self, state_dir: str | Path, *, cgroup_driver: str = "cgroupfs", call_timeout: float = 10.0,
                 start_timeout: float = 30.0, log_level: str = "warning", runc_path: str = "",
                 ksm: str = "mark") -> None:
        """`runc_path` set: this backend's containers run through that runc binary (the "runc" handler;
        runtime.linux.shim_runc) instead of the native init; pods are the same pod shims either way.
        `ksm`: "mark" the pod shims' memory mergeable (runtime.linux.zygote), "start" also start the
        kernel's samepage merging if it is off, "off" neither."""
        self.state_dir = Path(state_dir)
        longest = len(str(self.state_dir / "pods")) + 1 + MAX_SANDBOX_ID + len("/sock")
        if longest > UNIX_PATH_MAX:
            raise base.InvalidSpec("state_dir", f"{state_dir} is too long for the pod shim sockets "
                                   f"(at most {UNIX_PATH_MAX - (longest - len(str(self.state_dir)))} characters)")
        if cgroup_driver != "cgroupfs":
            raise base.Unsupported(f"cgroup_driver: {cgroup_driver!r} is not supported by the native runtime yet")
        self.cgroup_driver = cgroup_driver
        if ksm not in KSM_MODES:
            raise base.InvalidSpec("ksm", f"must be one of {', '.join(KSM_MODES)}, got {ksm!r}")
        self.ksm = ksm
        self.runc_path = runc_path
        if runc_path:
            if not os.path.isabs(runc_path) or not os.access(runc_path, os.X_OK):
                raise base.Unsupported(f"runc_path: {runc_path!r} is not an executable (absolute path)")
            self.name = "runc"
        # User namespaces need the kernel to allow them and idmapped overlay layers (5.19+) for the image.
        self.features = base.HandlerFeatures(
            recursive_read_only_mounts=True,
            user_namespaces=host.user_namespaces() and host.idmapped_mounts_kernel())
        if runc_path:
            # Not verified with our bundles through runc 1.1 (Debian 12): advertise nothing.
            self.features = base.HandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False)
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self.log_level = log_level
        self._zygote = Zygote(self.state_dir, log_level=log_level, ksm=ksm != "off")
        self._hierarchy = cgroups.open_hierarchy()
        self._pods: dict[str, Pod] = {}
        self._container_pod: dict[str, str] = {}
        self._stop_signals: dict[str, int] = {}
        self._sinks: list[Callable[[base.RuntimeEvent], None]] = []
        self._seccomp_cache = seccomp.FilterCache()
        (self.state_dir / "pods").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)

    async def start(self) -> None:
        """Start (or reconnect to) the shim zygote now, so the first pod does not pay for it.
        Optional: create_sandbox does it on demand."""
        if self.ksm == "start":
            problem = host.start_ksm()
            if problem:
                log.warning("ksm = \"start\": %s; the pod shims' memory is marked but not merged", problem)
        await self._zygote.ensure()

    # ------------------------------------------------------------ sandboxes

    async def create_sandbox(self, spec: base.SandboxSpec) -> base.SandboxStatus:
        _check_id(spec.id, "id")
        if len(spec.id) > MAX_SANDBOX_ID:
            raise base.InvalidSpec("id", f"sandbox ids are at most {MAX_SANDBOX_ID} characters")
        if spec.id in self._pods:
            raise base.WrongState(f"sandbox {spec.id} already exists")
        config = self._pod_config(spec)
        pod_dir = config["pod_dir"]
        if os.path.exists(pod_dir):
            raise base.WrongState(f"sandbox {spec.id} already has state in {pod_dir}")
        os.makedirs(pod_dir, mode=0o700)
        self._remember_created_cgroups(self._missing_cgroup_levels(config["cgroup_parent"]))
        # Written before the shim exists, so a shim that fails half-way can still be cleaned up after.
        _write_json(pod_paths(pod_dir)["config"], config)
        try:
            reply = await self._zygote.spawn(config, self.start_timeout)
        except BaseException:
            await asyncio.to_thread(self._cleanup_pod_dir, pod_dir)
            raise
        pod = Pod(id=spec.id, dir=pod_dir, client=ShimClient(spec.id, pod_paths(pod_dir)["sock"], self.call_timeout),
                  pid=int(reply["pid"]), namespaces=dict(reply.get("namespaces") or {}))
        self._pods[spec.id] = pod
        pod.events = asyncio.ensure_future(self._watch(pod))
        return base.SandboxStatus(id=spec.id, state=base.SandboxState.READY, monitor_pid=pod.pid,
                                  namespaces=dict(pod.namespaces))

    def _pod_config(self, spec: base.SandboxSpec) -> dict[str, Any]:
        lx = spec.linux
        if lx is None:
            raise base.InvalidSpec("linux", "the native Linux runtime needs the pod's Linux settings")
        uid_maps, gid_maps = self._id_mappings(lx)
        network = _mode(lx.network, "linux.network", {base.NamespaceMode.POD: "pod", base.NamespaceMode.NODE: "node"})
        ipc = _mode(lx.ipc, "linux.ipc", {base.NamespaceMode.POD: "pod", base.NamespaceMode.NODE: "node"})
        pid = _mode(lx.pid, "linux.pid", {base.NamespaceMode.POD: "pod", base.NamespaceMode.CONTAINER: "container",
                                          base.NamespaceMode.TARGET: "container", base.NamespaceMode.NODE: "node"})
        if network == "pod" and not lx.netns_path:
            raise base.InvalidSpec("linux.netns_path", "a pod network needs the pinned network namespace path")
        if lx.resources:
            raise base.Unsupported("linux.resources: pod-level resources are not applied by the native runtime yet")
        parent = lx.cgroup_parent
        if not parent.startswith("/") or ".." in parent.split("/") or parent == "/":
            raise base.InvalidSpec("linux.cgroup_parent", f"{parent!r} is not an absolute cgroupfs path")
        if not spec.sandbox_dir or not os.path.isabs(spec.sandbox_dir):
            raise base.InvalidSpec("sandbox_dir", f"{spec.sandbox_dir!r} must be an absolute directory")
        return {"sandbox_id": spec.id, "pod_dir": str(self.state_dir / "pods" / spec.id),
                "hostname": spec.hostname, "sandbox_dir": spec.sandbox_dir, "cgroup_parent": parent.rstrip("/"),
                "network": network, "ipc": ipc, "pid": pid, "netns_path": lx.netns_path,
                "shm_size": lx.shm_size, "sysctls": dict(lx.sysctls), "log_level": self.log_level,
                "uid_mappings": uid_maps, "gid_mappings": gid_maps}

    def _id_mappings(self, lx: base.LinuxSandboxSpec) -> tuple[list[list[int]], list[list[int]]]:
        """The pod's user namespace ranges: one each, container id 0 mapped, never host root."""
        if not lx.uid_mappings and not lx.gid_mappings:
            return [], []
        if not self.features.user_namespaces:
            raise base.Unsupported("linux.uid_mappings: this host does not support user namespaces with "
                                   "idmapped mounts (kernel 5.19+ and user.max_user_namespaces > 0)")
        out = []
        for name, ranges in (("uid_mappings", lx.uid_mappings), ("gid_mappings", lx.gid_mappings)):
            if len(ranges) != 1:
                raise base.InvalidSpec(f"linux.{name}", f"exactly one range is supported, got {len(ranges)}")
            m = ranges[0]
            if m.container_id != 0:
                raise base.InvalidSpec(f"linux.{name}", "the range must start at container id 0 (root is mapped)")
            if m.size <= 0 or m.host_id <= 0 or m.host_id + m.size > 1 << 32:
                raise base.InvalidSpec(f"linux.{name}", f"host range {m.host_id}+{m.size} must be non-empty, "
                                       "exclude host id 0 and end below 2^32")
            out.append([[m.container_id, m.host_id, m.size]])
        return out[0], out[1]

    def _missing_cgroup_levels(self, parent: str) -> list[str]:
        """The cgroup levels this pod will create (so removing the pod removes exactly those)."""
        levels = []
        path = parent.rstrip("/")
        while path and not self._hierarchy.cgroup(path).exists():
            levels.append(path)
            path = path.rsplit("/", 1)[0]
        return levels

    async def stop_sandbox(self, sandbox_id: str, timeout: float) -> None:
        pod = self._pods.get(sandbox_id)
        if pod is None:
            return
        statuses = await self._pod_containers(pod)
        await asyncio.gather(*(self.stop_container(s.id, timeout) for s in statuses
                               if s.state in (base.ContainerState.RUNNING, base.ContainerState.CREATED)),
                             return_exceptions=True)
        if not pod.lost:
            with contextlib.suppress(base.MonitorLost):
                await pod.client.call("stop_pod")

    async def remove_sandbox(self, sandbox_id: str) -> None:
        pod = self._pods.get(sandbox_id)
        pod_dir = str(self.state_dir / "pods" / sandbox_id)
        if pod is not None:
            pod.removing = True
        if pod is not None and not pod.lost:
            try:
                await pod.client.call("shutdown", timeout=max(self.call_timeout, 30.0))
            except base.RuntimeFailure as e:
                log.warning("sandbox %s: shim shutdown failed (%s); cleaning up without it", sandbox_id, e.message)
        pid = pod.pid if pod is not None else _read_int(pod_paths(pod_dir)["pid"])
        if pid:
            await self._end_shim(pid, pod_dir)
        if pod is not None:
            if pod.events is not None:
                pod.events.cancel()
            self._pods.pop(sandbox_id, None)
        for cid in [c for c, s in self._container_pod.items() if s == sandbox_id]:
            self._container_pod.pop(cid, None)
            self._stop_signals.pop(cid, None)
        await asyncio.to_thread(self._cleanup_pod_dir, pod_dir)

    async def _end_shim(self, pid: int, pod_dir: str) -> None:
        if await wait_pid_gone(pid, 5.0):
            return
        if _is_our_shim(pid, pod_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await wait_pid_gone(pid, 5.0)

    def _cleanup_pod_dir(self, pod_dir: str) -> None:
        """Release everything a pod's shim made, whether or not the shim is still there to do it."""
        if not os.path.isdir(pod_dir):
            return
        paths = pod_paths(pod_dir)
        cleanup_pod_mounts(pod_dir)
        config = _read_json(paths["config"]) or {}
        containers_dir = paths["containers"]
        if os.path.isdir(containers_dir):
            for cid in os.listdir(containers_dir):
                record = _read_json(os.path.join(containers_dir, cid, "state.json")) or {}
                shim_runc.release(record, cid)
                if record.get("cgroup"):
                    self._destroy_cgroup(str(record["cgroup"]))
                for key in ("upper", "work"):
                    if record.get(key):
                        shutil.rmtree(str(record[key]), ignore_errors=True)
        parent = config.get("cgroup_parent")
        if parent:
            self._destroy_cgroup(f"{parent}/monitor")
        if parent:
            self._remove_created_cgroups(str(parent))
        shutil.rmtree(pod_dir, ignore_errors=True)

    # Pod cgroups are normally made by kubelet. Levels that did not exist are made by the shim
    # (mkdir -p) and recorded here, so the last pod under them removes them again.
    def _created_cgroups_file(self) -> str:
        return str(self.state_dir / "created-cgroups.json")

    def _remember_created_cgroups(self, levels: list[str]) -> None:
        if levels:
            known = set((_read_json(self._created_cgroups_file()) or {}).get("levels") or [])
            _write_json(self._created_cgroups_file(), {"levels": sorted(known | set(levels))})

    def _remove_created_cgroups(self, parent: str) -> None:
        known = set((_read_json(self._created_cgroups_file()) or {}).get("levels") or [])
        mine = sorted((lv for lv in known if parent == lv or parent.startswith(lv + "/")), key=len, reverse=True)
        for level in mine:
            cg = self._hierarchy.cgroup(level)
            for d in cg.dirs().values():
                with contextlib.suppress(OSError):
                    os.rmdir(d)   # only if empty: another pod may still live below it
            if not cg.exists():
                known.discard(level)
        if mine:
            _write_json(self._created_cgroups_file(), {"levels": sorted(known)})

    def _destroy_cgroup(self, path: str) -> None:
        try:
            cg = self._hierarchy.cgroup(path)
            if cg.exists():
                cg.destroy()
        except (OSError, cgroups.CgroupError) as e:
            log.warning("cannot remove cgroup %s: %s", path, e)

    async def sandbox_status(self, sandbox_id: str) -> base.SandboxStatus:
        pod = self._pod(sandbox_id)
        if pod.lost:
            return base.SandboxStatus(id=sandbox_id, state=base.SandboxState.NOTREADY, monitor_pid=None,
                                      namespaces=dict(pod.namespaces), message=pod.lost)
        try:
            reply = await pod.client.call("status")
        except base.MonitorLost as e:
            self._mark_lost(pod, e.message)
            return base.SandboxStatus(id=sandbox_id, state=base.SandboxState.NOTREADY, message=pod.lost)
        state = base.SandboxState.READY if reply.get("ready") else base.SandboxState.NOTREADY
        return base.SandboxStatus(id=sandbox_id, state=state, monitor_pid=pod.pid,
                                  namespaces=dict(reply.get("namespaces") or {}))

    async def sandbox_stats(self, sandbox_id: str) -> base.SandboxStats:
        pod = self._live_pod(sandbox_id)
        reply = await pod.client.call("sandbox_stats")
        st = reply["stats"]
        containers = {}
        for s in await self._pod_containers(pod):
            with contextlib.suppress(base.RuntimeFailure):
                containers[s.id] = await self.container_stats(s.id)
        return base.SandboxStats(timestamp_ns=st["timestamp_ns"], cpu_usage_ns=st.get("cpu_usage_ns"),
                                 memory_working_set_bytes=st.get("memory_working_set_bytes"),
                                 memory_usage_bytes=st.get("memory_usage_bytes"),
                                 memory_rss_bytes=st.get("memory_rss_bytes"), pids=st.get("pids_current"),
                                 containers=containers)

    # ------------------------------------------------------------ containers

    async def create_container(self, spec: base.ContainerSpec) -> base.ContainerStatus:
        _check_id(spec.id, "id")
        pod = self._live_pod(spec.sandbox_id)
        if spec.id in self._container_pod:
            raise base.WrongState(f"container {spec.id} already exists")
        if spec.stdio.log_path is not None and not os.path.isabs(spec.stdio.log_path):
            raise base.InvalidSpec("stdio.log_path", f"{spec.stdio.log_path!r} must be an absolute path")
        if not 0 < spec.stop_signal < signal.NSIG:
            raise base.InvalidSpec("stop_signal", f"{spec.stop_signal} is not a signal")
        compiled = await self._compile_seccomp(spec.bundle_dir)
        self._container_pod[spec.id] = spec.sandbox_id
        try:
            reply = await pod.client.call(
                "create", timeout=self.start_timeout, id=spec.id, bundle=spec.bundle_dir,
                layers=list(spec.rootfs.layers), scratch=spec.rootfs.scratch, readonly=spec.rootfs.readonly,
                log_path=spec.stdio.log_path, stdin=spec.stdio.stdin, stdin_once=spec.stdio.stdin_once,
                tty=spec.stdio.tty, stop_signal=spec.stop_signal, seccomp=compiled,
                engine="runc" if self.runc_path else "native", runc_path=self.runc_path)
        except BaseException:
            self._container_pod.pop(spec.id, None)
            raise
        self._stop_signals[spec.id] = spec.stop_signal
        return _status(reply["status"])

    async def _compile_seccomp(self, bundle_dir: str) -> dict[str, Any] | None:
        """Compile the spec's seccomp profile here, once per distinct profile (FilterCache), instead of in
        every pod shim: the shim and the container init only load the BPF."""
        try:
            profile = (read_spec(bundle_dir).get("linux") or {}).get("seccomp")
        except SpecError as e:
            raise base.InvalidSpec(e.field, e.message) from None
        if not profile:
            return None
        compiled = await asyncio.to_thread(self._seccomp_cache.compile, profile)
        return {"bpf": compiled.bpf.hex(), "flags": compiled.flags, "nr": compiled.seccomp_nr}

    async def start_container(self, container_id: str) -> base.ContainerStatus:
        pod = self._container_live_pod(container_id)
        reply = await pod.client.call("start", timeout=self.start_timeout, id=container_id)
        return _status(reply["status"])

    async def kill_container(self, container_id: str, signal_number: int) -> None:
        pod = self._container_live_pod(container_id)
        await pod.client.call("kill", id=container_id, signal=signal_number,
                              all=signal_number == signal.SIGKILL)

    async def stop_container(self, container_id: str, timeout: float) -> base.ContainerStatus:
        pod = self._container_pod_or_raise(container_id)
        if pod.lost:
            return await self.container_status(container_id)
        status = _status((await pod.client.call("container_status", id=container_id))["status"])
        if status.state == base.ContainerState.EXITED:
            return status
        if timeout > 0:
            sig = self._stop_signals.get(container_id, signal.SIGTERM)
            await pod.client.call("kill", id=container_id, signal=sig, all=False)
            try:
                return await self._wait(pod, container_id, timeout)
            except base.OperationTimeout:
                pass
        await pod.client.call("kill", id=container_id, signal=signal.SIGKILL, all=True)
        return await self._wait(pod, container_id, STOP_KILL_WAIT)

    async def _wait(self, pod: Pod, container_id: str, timeout: float) -> base.ContainerStatus:
        reply = await pod.client.call("wait", timeout=timeout, id=container_id)
        return _status(reply["status"])

    async def container_status(self, container_id: str) -> base.ContainerStatus:
        pod = self._container_pod_or_raise(container_id)
        if not pod.lost:
            try:
                return _status((await pod.client.call("container_status", id=container_id))["status"])
            except base.MonitorLost as e:
                self._mark_lost(pod, e.message)
        return self._status_from_files(pod, container_id)

    async def delete_container(self, container_id: str) -> None:
        sandbox_id = self._container_pod.get(container_id)
        if sandbox_id is None:
            return
        pod = self._pods.get(sandbox_id)
        if pod is not None and not pod.lost:
            await pod.client.call("delete", timeout=max(self.call_timeout, 30.0), id=container_id)
        elif pod is not None:
            await asyncio.to_thread(self._delete_container_files, pod, container_id)
        self._container_pod.pop(container_id, None)
        self._stop_signals.pop(container_id, None)

    def _delete_container_files(self, pod: Pod, container_id: str) -> None:
        state_dir = os.path.join(pod_paths(pod.dir)["containers"], container_id)
        record = _read_json(os.path.join(state_dir, "state.json")) or {}
        shim_runc.release(record, container_id)
        if record.get("cgroup"):
            self._destroy_cgroup(str(record["cgroup"]))
        for key in ("upper", "work"):
            if record.get(key):
                shutil.rmtree(str(record[key]), ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)

    async def update_resources(self, container_id: str, resources: Mapping[str, Any]) -> None:
        pod = self._container_live_pod(container_id)
        await pod.client.call("update", id=container_id, resources=dict(resources))

    async def reopen_log(self, container_id: str) -> None:
        pod = self._container_live_pod(container_id)
        await pod.client.call("reopen_log", id=container_id)

    async def container_stats(self, container_id: str) -> base.ContainerStats:
        pod = self._container_live_pod(container_id)
        st = (await pod.client.call("stats", id=container_id))["stats"]
        return base.ContainerStats(
            timestamp_ns=st["timestamp_ns"], cpu_usage_ns=st.get("cpu_usage_ns"),
            memory_working_set_bytes=st.get("memory_working_set_bytes"),
            memory_usage_bytes=st.get("memory_usage_bytes"), memory_rss_bytes=st.get("memory_rss_bytes"),
            memory_available_bytes=_available(st), page_faults=st.get("page_faults"),
            major_page_faults=st.get("major_page_faults"), pids=st.get("pids_current"),
            writable_layer_mountpoint=st.get("writable_layer_mountpoint") or "",
            writable_layer_bytes=st.get("writable_layer_bytes"), writable_layer_inodes=st.get("writable_layer_inodes"))

    # ------------------------------------------------------------ exec and attach

    async def exec(self, container_id: str, spec: base.ExecSpec) -> ExecSession:
        pod = self._container_live_pod(container_id)
        if not spec.args:
            raise base.InvalidSpec("cmd", "no command to execute")
        reply, fds = await pod.client.call_fds(
            "exec", timeout=self.start_timeout, id=container_id, args=list(spec.args),
            env=list(spec.env) if spec.env is not None else None, cwd=spec.cwd, tty=spec.tty,
            stdin=spec.stdin and not spec.tty, stdout=spec.stdout, stderr=spec.stderr and not spec.tty)
        exec_id = str(reply["exec_id"])
        stdin, outputs, pty = -1, {}, -1
        if reply.get("tty"):
            pty = fds[0]
            outputs = {pty: base.StreamKind.STDOUT}
        else:
            it = iter(fds)
            if spec.stdin:
                stdin = next(it)
            if spec.stdout:
                outputs[next(it)] = base.StreamKind.STDOUT
            if spec.stderr:
                outputs[next(it)] = base.StreamKind.STDERR

        async def wait_exit() -> int:
            return int((await pod.client.call("exec_wait", timeout=0, exec_id=exec_id))["exit_code"])

        async def kill(sig: int) -> None:
            await pod.client.call("exec_kill", exec_id=exec_id, signal=sig)

        return ExecSession(stdin=stdin, outputs=outputs, pty=pty, wait_exit=wait_exit, kill=kill)

    async def exec_sync(self, container_id: str, spec: base.ExecSpec, timeout: float | None,
                        output_cap: int) -> base.ExecResult:
        plain = base.ExecSpec(args=spec.args, env=spec.env, cwd=spec.cwd, tty=False, stdin=False,
                              stdout=True, stderr=True)
        session = await self.exec(container_id, plain)
        out, err = bytearray(), bytearray()

        async def collect() -> None:
            while (chunk := await session.read()) is not None:
                kind, data = chunk
                buf = out if kind == base.StreamKind.STDOUT else err
                room = output_cap - len(buf)
                if room > 0:
                    buf += data[:room]

        collector = asyncio.ensure_future(collect())
        timed_out = False
        try:
            try:
                code = await asyncio.wait_for(session.wait(), timeout if timeout and timeout > 0 else None)
            except asyncio.TimeoutError:
                timed_out = True
                await session.kill_group()
                code = await asyncio.wait_for(session.wait(), STOP_KILL_WAIT)
            # Output still in the pipes after the exit; a leftover background process may hold them open.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(collector), 2.0)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            await session.close()
        return base.ExecResult(exit_code=code, stdout=bytes(out), stderr=bytes(err), timed_out=timed_out)

    async def attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool) -> AttachSession:
        pod = self._container_live_pod(container_id)
        sock, reply = await pod.client.open_stream("attach", id=container_id, stdin=stdin, stdout=stdout,
                                                   stderr=stderr)
        return AttachSession(sock, tty=bool(reply.get("tty")))

    # ------------------------------------------------------------ restart recovery and events

    async def recover(self, known_sandboxes: list[str]) -> list[base.RecoveredSandbox]:
        results = await asyncio.gather(*(self._recover_one(sid) for sid in known_sandboxes))
        return list(results)

    async def _recover_one(self, sandbox_id: str) -> base.RecoveredSandbox:
        pod_dir = str(self.state_dir / "pods" / sandbox_id)
        if not os.path.isdir(pod_dir):
            status = base.SandboxStatus(id=sandbox_id, state=base.SandboxState.NOTREADY,
                                        message="no runtime state for this sandbox (the host rebooted?)")
            return base.RecoveredSandbox(status=status, containers=())
        pod = Pod(id=sandbox_id, dir=pod_dir, client=ShimClient(sandbox_id, pod_paths(pod_dir)["sock"],
                                                                self.call_timeout))
        self._pods[sandbox_id] = pod
        pod.pid = _read_int(pod_paths(pod_dir)["pid"])
        try:
            reply = await pod.client.call("status")
        except (base.MonitorLost, base.OperationTimeout) as e:
            hung = bool(pod.pid) and pid_alive(pod.pid) and _is_our_shim(pod.pid, pod_dir)
            if hung:
                # Alive but not answering: say so, keep it, and keep trying to reconnect in the background.
                why = f"the pod shim (pid {pod.pid}) does not answer: {e.message}"
                containers = [dataclasses.replace(c, state=base.ContainerState.UNKNOWN, message=why)
                              for c in self._containers_from_files(pod)]
                pod.events = asyncio.ensure_future(self._watch(pod))
            else:
                why = pod.lost = f"the pod shim is gone: {e.message}"
                containers = self._containers_from_files(pod)
            for c in containers:
                self._container_pod[c.id] = sandbox_id
            status = base.SandboxStatus(id=sandbox_id, state=base.SandboxState.NOTREADY, message=why)
            return base.RecoveredSandbox(status=status, containers=tuple(containers))
        pod.pid = int(reply["pid"])
        pod.namespaces = dict(reply.get("namespaces") or {})
        containers = [_status(s) for s in reply.get("containers") or []]
        for c in containers:
            self._container_pod[c.id] = sandbox_id
        for s in reply.get("containers") or []:
            self._stop_signals[str(s["id"])] = int(s.get("stop_signal") or signal.SIGTERM)
        pod.events = asyncio.ensure_future(self._watch(pod))
        state = base.SandboxState.READY if reply.get("ready") else base.SandboxState.NOTREADY
        return base.RecoveredSandbox(
            status=base.SandboxStatus(id=sandbox_id, state=state, monitor_pid=pod.pid,
                                      namespaces=dict(pod.namespaces)),
            containers=tuple(containers))

    def subscribe(self, sink: Callable[[base.RuntimeEvent], None]) -> None:
        self._sinks.append(sink)

    def _emit(self, event: base.RuntimeEvent) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - one bad subscriber must not starve the others
                log.exception("event sink failed")

    async def _watch(self, pod: Pod) -> None:
        """Exit events from the shim. The stream ending means the shim died (it is confirmed by the
        process going away within DEATH_CONFIRM seconds), otherwise the watcher reconnects."""
        delay = 0.1
        while not pod.lost and not pod.removing:
            try:
                sock, _ = await pod.client.open_stream("events")
            except base.RuntimeFailure as e:
                if not (pod.pid and pid_alive(pod.pid)):
                    self._mark_lost(pod, f"the pod shim is gone: {e.message}")
                    return
                # alive but not answering (stopped, overloaded): try again, a little later each time
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            await self._read_events(pod, sock)
            # The socket closes while the process is still exiting: give it a moment to be gone.
            if not pod.pid or await wait_pid_gone(pod.pid, DEATH_CONFIRM):
                self._mark_lost(pod, "the pod shim exited unexpectedly")
                return

    async def _read_events(self, pod: Pod, sock: socket.socket) -> None:
        try:
            while True:
                msg, fds = await aio.arecv(sock)
                for fd in fds:
                    os.close(fd)
                if msg is None:
                    return
                if msg.get("event") == "exited":
                    self._emit(base.RuntimeEvent(base.EventKind.EXITED, pod.id, str(msg["id"]),
                                                 _status(msg["status"])))
        except (OSError, proto.ProtocolError) as e:
            log.warning("sandbox %s: event stream failed: %s", pod.id, e)
        finally:
            sock.close()

    def _mark_lost(self, pod: Pod, why: str) -> None:
        if pod.lost or pod.removing or pod.id not in self._pods:
            return
        if pod.pid and pid_alive(pod.pid):
            return  # a broken connection, not a dead shim (the watcher keeps trying)
        pod.lost = why
        log.warning("sandbox %s: %s", pod.id, why)
        self._emit(base.RuntimeEvent(base.EventKind.MONITOR_LOST, pod.id, None))
        for status in self._containers_from_files(pod):
            self._emit(base.RuntimeEvent(base.EventKind.EXITED, pod.id, status.id, status))

    def _containers_from_files(self, pod: Pod) -> list[base.ContainerStatus]:
        containers_dir = pod_paths(pod.dir)["containers"]
        if not os.path.isdir(containers_dir):
            return []
        return [self._status_from_files(pod, cid) for cid in sorted(os.listdir(containers_dir))
                if os.path.exists(os.path.join(containers_dir, cid, "state.json"))]

    def _status_from_files(self, pod: Pod, container_id: str) -> base.ContainerStatus:
        """A container of a dead shim: its exit file if it was written, else exited with an unknown code."""
        state_dir = os.path.join(pod_paths(pod.dir)["containers"], container_id)
        record = _read_json(os.path.join(state_dir, "state.json"))
        if record is None:
            raise base.ObjectNotFound(f"container {container_id} not found")
        exit_record = _read_json(os.path.join(state_dir, "exit.json"))
        common = {"id": container_id, "pid": record.get("pid"), "created_at": record.get("created_at", 0),
                  "started_at": record.get("started_at", 0)}
        if exit_record is not None:
            return base.ContainerStatus(state=base.ContainerState.EXITED, finished_at=exit_record["finished_at"],
                                        exit_code=exit_record["exit_code"], reason=exit_record.get("reason", ""),
                                        message=exit_record.get("message", ""), **common)
        if record.get("state") == "created":
            return base.ContainerStatus(state=base.ContainerState.UNKNOWN,
                                        message=f"the pod shim died before the container started ({pod.lost})",
                                        **common)
        return base.ContainerStatus(state=base.ContainerState.EXITED, exit_code=EXIT_UNKNOWN,
                                    finished_at=time.time_ns(), reason=base.REASON_ERROR,
                                    message=f"the pod shim died; the exit status is unknown ({pod.lost})",
                                    **common)

    async def close(self) -> None:
        """Disconnect from every shim (containers keep running) and stop the zygote."""
        for pod in self._pods.values():
            if pod.events is not None:
                pod.events.cancel()
        await asyncio.gather(*(p.events for p in self._pods.values() if p.events is not None),
                             return_exceptions=True)
        self._pods.clear()
        self._container_pod.clear()
        await self._zygote.stop()

    # ------------------------------------------------------------ lookups

    def _pod(self, sandbox_id: str) -> Pod:
        pod = self._pods.get(sandbox_id)
        if pod is None:
            raise base.ObjectNotFound(f"sandbox {sandbox_id} not found")
        return pod

    def _live_pod(self, sandbox_id: str) -> Pod:
        pod = self._pod(sandbox_id)
        if pod.lost:
            raise base.MonitorLost(f"sandbox {sandbox_id}: {pod.lost}")
        return pod

    def _container_pod_or_raise(self, container_id: str) -> Pod:
        sandbox_id = self._container_pod.get(container_id)
        if sandbox_id is None:
            raise base.ObjectNotFound(f"container {container_id} not found")
        return self._pod(sandbox_id)

    def _container_live_pod(self, container_id: str) -> Pod:
        pod = self._container_pod_or_raise(container_id)
        if pod.lost:
            raise base.MonitorLost(f"container {container_id}: {pod.lost}")
        return pod

    async def _pod_containers(self, pod: Pod) -> list[base.ContainerStatus]:
        if pod.lost:
            return self._containers_from_files(pod)
        try:
            reply = await pod.client.call("status")
        except base.MonitorLost as e:
            self._mark_lost(pod, e.message)
            return self._containers_from_files(pod)
        return [_status(s) for s in reply.get("containers") or []]


# ---------------------------------------------------------------- helpers


def _status(d: Mapping[str, Any]) -> base.ContainerStatus:
    return base.ContainerStatus(id=str(d["id"]), state=base.ContainerState(d["state"]), pid=d.get("pid"),
                                created_at=int(d.get("created_at") or 0), started_at=int(d.get("started_at") or 0),
                                finished_at=int(d.get("finished_at") or 0), exit_code=int(d.get("exit_code") or 0),
                                reason=str(d.get("reason") or ""), message=str(d.get("message") or ""))


def _available(st: Mapping[str, Any]) -> int | None:
    limit, ws = st.get("memory_limit_bytes"), st.get("memory_working_set_bytes")
    if limit is None or ws is None or limit >= 1 << 62:
        return None
    return max(0, int(limit) - int(ws))


def _mode(mode: base.NamespaceMode, field_name: str, allowed: dict[base.NamespaceMode, str]) -> str:
    if mode not in allowed:
        raise base.InvalidSpec(field_name, f"namespace mode {mode.value!r} is not valid here")
    return allowed[mode]


def _check_id(value: str, field_name: str) -> None:
    if not isinstance(value, str) or not _ID.match(value):
        raise base.InvalidSpec(field_name, f"{value!r} is not a valid identifier")


def _is_our_shim(pid: int, pod_dir: str) -> bool:
    """Before signalling a pid read from a file: is it still a process of ours (not a recycled pid)?"""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "cri-shim-pod" and _read_int(pod_paths(pod_dir)["pid"]) == pid


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: str, obj: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _read_int(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return 0
