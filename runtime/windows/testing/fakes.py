"""Fakes of the layer mounter, job objects and HCN for tests on Linux.

The real ones are vmcompute.dll's undocumented layer exports, kernel32 job
objects and computenetwork.dll, none of which exist on Linux. These fakes keep
the state a test needs to prove the backend's call order and cleanup: which
scratch is mounted, which jobs exist, which namespaces and endpoints exist.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.windows.jobobject import JobAccounting, JobLimits, JobProcessSpec, SpawnedProcess
from runtime.windows.layer_mount import SCRATCH_NAME, LayerError, folder_name
from runtime.windows.network import HCN_E_NAMESPACE_NOT_FOUND, HcnError
from runtime.windows.testing.fake_hcs import Program, _write_all

# NameToGuid's algorithm is undocumented; the fake derives a stable GUID from the folder name instead.
FAKE_LAYER_NAMESPACE = uuid.UUID("6f1a7c3e-0000-4000-8000-63726973686d")


class FakeLayers:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mounted: dict[str, str] = {}           # scratch dir -> volume path
        self.calls: list[tuple[str, str]] = []
        self.fail_mount: int | None = None          # an HRESULT to fail the next mount with
        self.expanded: dict[str, int] = {}

    def layer_id(self, layer_path: str) -> str:
        return str(uuid.uuid5(FAKE_LAYER_NAMESPACE, folder_name(layer_path)))

    def mount(self, scratch_dir: str, parents: Sequence[str]) -> str:
        with self.lock:
            self.calls.append(("mount", scratch_dir))
            if self.fail_mount is not None:
                hr, self.fail_mount = self.fail_mount, None
                raise LayerError("PrepareLayer", hr, scratch_dir)
            if not os.path.isfile(os.path.join(scratch_dir, SCRATCH_NAME)):
                raise LayerError("ActivateLayer", 0x80070002, scratch_dir)   # no sandbox.vhdx to attach
            if scratch_dir in self.mounted:
                raise LayerError("ActivateLayer", 0x800700B7, scratch_dir)   # ERROR_ALREADY_EXISTS
            for p in parents:
                if not os.path.isdir(p):
                    raise LayerError("PrepareLayer", 0x80070003, p)
            volume = "\\\\?\\Volume{" + str(uuid.uuid5(FAKE_LAYER_NAMESPACE, scratch_dir)) + "}\\"
            self.mounted[scratch_dir] = volume
            return volume

    def unmount(self, scratch_dir: str) -> None:
        with self.lock:
            self.calls.append(("unmount", scratch_dir))
            self.mounted.pop(scratch_dir, None)

    def expand_scratch(self, scratch_dir: str, size_bytes: int) -> None:
        with self.lock:
            self.expanded[scratch_dir] = size_bytes

    def is_mounted(self, volume: str) -> bool:
        with self.lock:
            return volume in self.mounted.values()


@dataclass(eq=False)
class FakeJob:
    name: str
    limits: JobLimits = field(default_factory=JobLimits)
    pids: list[int] = field(default_factory=list)
    terminated: bool = False
    closed: bool = False


@dataclass(eq=False)
class _JobProcess:
    pid: int
    job: FakeJob
    spec: JobProcessSpec
    program: Program
    stop: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    code: int = 0
    signals: int = 0
    inner: list[int] = field(default_factory=list)


class FakeJobs:
    """JobApi with scripted processes that write real pipes (like the fake HCS)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._handles = itertools.count(0x9000, 4)
        self._pids = itertools.count(7000, 4)
        self.jobs: dict[int, FakeJob] = {}
        self.by_name: dict[str, FakeJob] = {}
        self.procs: dict[int, _JobProcess] = {}
        self.programs: list[tuple[str, Program]] = []
        self.calls: list[tuple[str, str]] = []
        self.fallback: Callable[[str], Program] = lambda command_line: Program()   # when no program matches

    def program(self, needle: str, program: Program) -> None:
        self.programs.insert(0, (needle, program))

    def create(self, name: str) -> int:
        with self.lock:
            self.calls.append(("create", name))
            if name in self.by_name and not self.by_name[name].terminated:
                raise RuntimeError(f"job {name} exists")
            job = FakeJob(name)
            self.by_name[name] = job
            h = next(self._handles)
            self.jobs[h] = job
            return h

    def open(self, name: str) -> int | None:
        with self.lock:
            job = self.by_name.get(name)
            if job is None or job.terminated:
                return None
            h = next(self._handles)
            self.jobs[h] = job
            return h

    def _job(self, handle: int) -> FakeJob:
        job = self.jobs.get(handle)
        if job is None:
            raise AssertionError(f"unknown or closed job handle {handle}")
        return job

    def set_limits(self, job: int, limits: JobLimits) -> None:
        with self.lock:
            self.calls.append(("set_limits", self._job(job).name))
            self._job(job).limits = limits

    def spawn(self, job: int, spec: JobProcessSpec) -> SpawnedProcess:
        with self.lock:
            j = self._job(job)
            if j.terminated:
                raise AssertionError("spawn into a terminated job")
            program = next((p for n, p in self.programs if n in spec.command_line), None) \
                or self.fallback(spec.command_line)
            p = _JobProcess(next(self._pids), j, spec, program)
            j.pids.append(p.pid)
            self.procs[p.pid] = p
            self.calls.append(("spawn", spec.command_line))
            in_r, in_w = os.pipe() if spec.stdin else (None, None)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            p.inner = [fd for fd in (in_r, out_w, err_w) if fd is not None]
        threading.Thread(target=self._run, args=(p, in_r, out_w, err_w), daemon=True).start()
        return SpawnedProcess(p.pid, in_w, out_r, err_r)

    def _run(self, p: _JobProcess, in_r: int | None, out_w: int, err_w: int) -> None:
        prog = p.program
        try:
            _write_all(out_w, prog.stdout)
            _write_all(err_w, prog.stderr)
            if prog.echo_stdin and in_r is not None:
                while chunk := os.read(in_r, 65536):
                    _write_all(out_w, chunk)
            elif prog.until_signalled:
                p.stop.wait()
            elif prog.duration:
                p.stop.wait(prog.duration)
        except OSError:
            pass
        self._exit(p, prog.exit_code)

    def _exit(self, p: _JobProcess, code: int) -> None:
        with self.lock:
            if p.exited.is_set():
                return
            p.code = code
            for fd in p.inner:
                try:
                    os.close(fd)
                except OSError:
                    pass
            p.inner = []
            p.exited.set()

    def wait(self, pid: int, timeout_ms: int) -> int | None:
        p = self.procs[pid]
        return p.code if p.exited.wait(timeout_ms / 1000) else None

    def signal(self, pid: int) -> None:
        p = self.procs[pid]
        p.signals += 1
        if p.program.on_ctrl_shutdown is not None:
            p.stop.set()
            self._exit(p, p.program.on_ctrl_shutdown)

    def kill(self, pid: int) -> None:
        p = self.procs[pid]
        p.stop.set()
        self._exit(p, 1)

    def terminate(self, job: int, exit_code: int) -> None:
        with self.lock:
            j = self._job(job)
            self.calls.append(("terminate", j.name))
            j.terminated = True
            for pid in j.pids:
                self.procs[pid].stop.set()
                self._exit(self.procs[pid], exit_code)

    def accounting(self, job: int) -> JobAccounting:
        with self.lock:
            j = self._job(job)
            active = sum(1 for pid in j.pids if not self.procs[pid].exited.is_set())
            return JobAccounting(cpu_100ns=1_000_000 * len(j.pids), active_processes=active)

    def close(self, job: int) -> None:
        with self.lock:
            j = self.jobs.pop(job, None)
            if j is None:
                raise AssertionError(f"close of an unknown or closed job handle {job}")
            self.calls.append(("close", j.name))

    def open_handles(self) -> list[str]:
        with self.lock:
            return [j.name for j in self.jobs.values()]


class FakeHcn:
    """HcnApi over dicts: namespaces with attached endpoints, as CNI plugins would leave them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.namespaces: dict[str, list[str]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def add_endpoint(self, namespace: str, endpoint_id: str, ip: str, mac: str) -> None:
        """What a CNI plugin's ADD does (test helper)."""
        with self.lock:
            self.endpoints[endpoint_id] = {"ID": endpoint_id, "MacAddress": mac,
                                           "IpConfigurations": [{"IpAddress": ip, "PrefixLength": 24}]}
            self.namespaces[namespace].append(endpoint_id)

    def create_namespace(self, namespace_id: str, settings: str) -> None:
        with self.lock:
            self.calls.append(("create_namespace", namespace_id))
            doc = json.loads(settings)
            assert doc.get("SchemaVersion") == {"Major": 2, "Minor": 0}, doc
            if namespace_id in self.namespaces:
                raise HcnError("HcnCreateNamespace", 0x803B000D, None)
            self.namespaces[namespace_id] = []

    def namespace_properties(self, namespace_id: str) -> str | None:
        with self.lock:
            eps = self.namespaces.get(namespace_id)
            if eps is None:
                return None
            return json.dumps({"ID": namespace_id, "NamespaceId": 7, "Type": "HostDefault",
                               "Resources": [{"Type": "Endpoint", "Data": {"ID": e}} for e in eps],
                               "SchemaVersion": {"Major": 2, "Minor": 0}})

    def modify_namespace(self, namespace_id: str, request: str) -> None:
        with self.lock:
            self.calls.append(("modify_namespace", request))
            doc = json.loads(request)
            eps = self.namespaces.get(namespace_id)
            if eps is None:
                raise HcnError("HcnModifyNamespace", HCN_E_NAMESPACE_NOT_FOUND, None)
            ep = doc["Settings"]["EndpointId"]
            if doc["RequestType"] == "Remove":
                eps.remove(ep)
            else:
                eps.append(ep)

    def delete_namespace(self, namespace_id: str) -> None:
        with self.lock:
            self.calls.append(("delete_namespace", namespace_id))
            if namespace_id not in self.namespaces:
                raise HcnError("HcnDeleteNamespace", HCN_E_NAMESPACE_NOT_FOUND, None)
            if self.namespaces[namespace_id]:
                raise HcnError("HcnDeleteNamespace", 0x803B0012, '{"Error": "endpoints still attached"}')
            del self.namespaces[namespace_id]

    def endpoint_properties(self, endpoint_id: str) -> str | None:
        with self.lock:
            ep = self.endpoints.get(endpoint_id)
            return None if ep is None else json.dumps(ep)
