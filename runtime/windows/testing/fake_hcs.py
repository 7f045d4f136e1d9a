"""A fake computecore.dll: the HCS state machine, for tests on Linux.

The real Host Compute Service cannot run on Linux (it is vmcompute.exe on
Windows kernel features), so the Windows tests bind `ComputeCoreApi` to this
fake through real ctypes (`FakeDll`). It enforces what the documentation and
hcsshim say HCS enforces, and a little more, so a wrong call order fails a test:

- operations: waiting on an unused op -> OPERATION_NOT_STARTED; starting a call
  on an op that is in flight -> OPERATION_ALREADY_STARTED; closing an in-flight
  op, or using a closed/unknown handle, is recorded as a violation;
- systems: Created -> Running -> Stopped; duplicate id -> SYSTEM_ALREADY_EXISTS;
  unknown id -> SYSTEM_NOT_FOUND; start twice / create a process when not
  running -> INVALID_STATE; a second shutdown/terminate -> SYSTEM_ALREADY_STOPPED;
- processes: signal/terminate after exit -> PROCESS_ALREADY_STOPPED;
- every JSON document is validated closed-world against the official schema
  (`validate`); a failure returns INVALID_JSON with a ResultError document and
  is recorded as a violation (our documents must always be valid);
- a process-isolated container's Storage.Path must be a volume the fake layer
  mounter has mounted, and its Networking.Namespace must exist in the fake HCN;
- Hyper-V: SCSI disks must be granted with HcsGrantVmAccess first; a hosted
  container needs its layers shared into the running utility VM.

Processes are scripted (`Program`) and do real I/O on os.pipe() pairs whose
descriptors stand in for the HANDLEs HCS returns, so stdio pumps and the CRI
log writer run for real. Faults: any call can be made to fail with any HRESULT
(synchronously or at the wait), to take longer than the caller waits, or to hit
the WS2022 CreateProcess quirk. `calls` records every call for order checks.
"""

from __future__ import annotations

import ctypes as C
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.windows import _abi
from runtime.windows._abi import HResult
from runtime.windows.testing.fake_dll import Allocator, put, read_in

E_HANDLE = 0x80070006
E_INVALIDARG = 0x80070057
E_ABORT = 0x80004004
ERROR_NOT_FOUND = 0x80070490
VOLUME_PREFIX = "\\\\?\\Volume{"

Validate = Callable[[str, Any], list[str]]
Info = tuple[int, int | None, int | None, int | None]
# What an operation's effect returns: its HRESULT, result document and, for process calls, process info.
Outcome = tuple[int, str | None] | tuple[int, str | None, Info | None]


def s32(hr: int) -> int:
    """An unsigned HRESULT as the int32 a C function returns."""
    return hr - (1 << 32) if hr & 0x80000000 else hr


@dataclass
class Program:
    """What a fake process does. It runs on its own thread with real pipes."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    until_signalled: bool = False          # keep running after the output until signalled/terminated
    on_ctrl_shutdown: int | None = 0       # exit code on CtrlShutdown/CtrlC; None = ignores them
    echo_stdin: bool = False               # copy stdin to stdout until EOF, then exit
    duration: float = 0.0                  # seconds to run after the output (unless until_signalled)


@dataclass(eq=False)
class FakeProcess:
    pid: int
    system: FakeSystem
    params: dict[str, Any]
    program: Program
    caller_fds: tuple[int | None, int | None, int | None]   # stdin (write end), stdout, stderr (read ends)
    inner_fds: list[int] = field(default_factory=list)
    stdin_fd: int | None = None
    out_fd: int | None = None
    err_fd: int | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    signals: list[str] = field(default_factory=list)
    modifications: list[dict[str, Any]] = field(default_factory=list)
    handles: int = 0


@dataclass(eq=False)
class FakeSystem:
    id: str
    document: dict[str, Any]
    kind: str                                 # "Container" or "VirtualMachine"
    owner: str
    state: str = "Created"                    # Created, Running, Stopped
    exit_type: str = ""
    stopped: threading.Event = field(default_factory=threading.Event)
    processes: list[FakeProcess] = field(default_factory=list)
    modifications: list[dict[str, Any]] = field(default_factory=list)
    shares: set[str] = field(default_factory=set)
    scsi: dict[str, str] = field(default_factory=dict)
    handles: int = 0
    cpu_100ns: int = 0
    hosting: str = ""


@dataclass(eq=False)
class FakeOp:
    handle: int
    call: str = ""
    state: str = "idle"                      # idle, running, done
    hr: int = 0
    doc: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    info: Info | None = None
    timer: threading.Timer | None = None
    closed: bool = False


@dataclass
class Fault:
    call: str
    hr: int
    stage: str                                # "call" (returned by the API) or "wait" (operation result)
    times: int
    match: Callable[[dict[str, Any]], bool] | None


class FakeHcs:
    def __init__(self, validate: Validate, *, volume_mounted: Callable[[str], bool] = lambda v: True,
                 namespace_exists: Callable[[str], bool] = lambda n: True) -> None:
        self._validate = validate
        self._volume_mounted = volume_mounted
        self._namespace_exists = namespace_exists
        self.alloc = Allocator()
        self.lock = threading.RLock()
        self._ids = itertools.count(0x1000, 8)
        self._pids = itertools.count(4000, 4)
        self.ops: dict[int, FakeOp] = {}
        self.system_handles: dict[int, FakeSystem] = {}
        self.process_handles: dict[int, FakeProcess] = {}
        self.systems: dict[str, FakeSystem] = {}
        self.calls: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.faults: list[Fault] = []
        self.delays: dict[str, float] = {}
        self.programs: list[tuple[str, Program]] = []
        self.granted: set[tuple[str, str]] = set()
        self.quirk_create_process_wait_fails = False
        self.signal_blocks_until_exit = False
        self.documents: list[tuple[str, Any]] = []
        # What a command line that no `program` matches runs (a daemon-hosted fake interprets commands here).
        self.fallback: Callable[[str], Program] = lambda command_line: Program()

    # ------------------------------------------------------------- test controls

    def program(self, needle: str, program: Program) -> None:
        """Processes whose command line contains `needle` run `program` (first match wins)."""
        self.programs.insert(0, (needle, program))

    def fail(self, call: str, hr: int, *, stage: str = "wait", times: int = 1,
             match: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.faults.append(Fault(call, hr, stage, times, match))

    def delay(self, call: str, seconds: float) -> None:
        self.delays[call] = seconds

    def crash(self, system_id: str) -> None:
        """The system dies on its own (UnexpectedExit), taking its processes with it."""
        with self.lock:
            self._stop_system(self.systems[system_id], "UnexpectedExit")

    def call_names(self) -> list[str]:
        return [c for c, _ in self.calls]

    def problems(self) -> list[str]:
        """Everything left open or done wrong; a test ends with this empty."""
        with self.lock:
            out = list(self.violations) + list(self.alloc.errors)
            out += [f"operation 0x{h:x} ({o.call}) never closed" for h, o in self.ops.items() if not o.closed]
            out += [f"system handle 0x{h:x} ({s.id}) never closed" for h, s in self.system_handles.items()]
            out += [f"process handle 0x{h:x} (pid {p.pid}) never closed" for h, p in self.process_handles.items()]
            if self.alloc.outstanding():
                out.append(f"{self.alloc.outstanding()} returned strings never freed")
            return out

    def shutdown(self) -> None:
        """Stop every fake process thread (test teardown)."""
        with self.lock:
            for s in self.systems.values():
                self._stop_system(s, "ForcedExit")

    # ------------------------------------------------------------- plumbing

    def _record(self, call: str, detail: str = "") -> None:
        with self.lock:
            self.calls.append((call, detail))

    def _violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def _fault(self, call: str, stage: str, ctx: dict[str, Any]) -> int | None:
        with self.lock:
            for f in self.faults:
                if f.call == call and f.stage == stage and f.times > 0 and (f.match is None or f.match(ctx)):
                    f.times -= 1
                    return f.hr
        return None

    def _check_doc(self, call: str, definition: str, text: str | None) -> tuple[Any, str | None]:
        """Parse and validate; returns (document, ResultError JSON or None)."""
        if text is None:
            return None, None
        try:
            doc = json.loads(text)
        except ValueError as e:
            self._violation(f"{call}: not JSON: {e}")
            return None, _result_error(HResult.INVALID_JSON, f"invalid JSON: {e}")
        errors = self._validate(definition, doc)
        with self.lock:
            self.documents.append((definition, doc))
        if errors:
            self._violation(f"{call}: {'; '.join(errors)}")
            return None, _result_error(HResult.INVALID_JSON, "; ".join(errors))
        return doc, None

    def _op(self, handle: int | None, call: str) -> FakeOp | None:
        with self.lock:
            op = self.ops.get(handle or 0)
            if op is None or op.closed:
                self._violation(f"{call}: unknown or closed operation handle {handle}")
                return None
            return op

    def _begin(self, op: FakeOp, call: str) -> int | None:
        """Claim `op` for a call; an HRESULT if it cannot be used."""
        with self.lock:
            if op.state == "running":
                return HResult.OPERATION_ALREADY_STARTED
            op.state, op.call, op.hr, op.doc, op.info = "running", call, 0, None, None
            op.done.clear()
            return None

    def _finish(self, op: FakeOp, hr: int, doc: str | None = None,
                info: Info | None = None) -> None:
        with self.lock:
            if op.state != "running":
                return
            op.state, op.hr, op.doc, op.info, op.timer = "done", hr, doc, info, None
            op.done.set()

    def _run(self, op_handle: int | None, call: str, ctx: dict[str, Any],
             effect: Callable[[], Outcome]) -> int:
        """Start an operation: apply `effect` now or after an injected delay; return the call's HRESULT."""
        op = self._op(op_handle, call)
        if op is None:
            return s32(E_HANDLE)
        busy = self._begin(op, call)
        if busy is not None:
            return s32(busy)
        hr = self._fault(call, "call", ctx)
        if hr is not None:
            self._finish(op, hr, _result_error(hr, f"injected failure of {call}"))
            return s32(hr)

        def complete() -> None:
            injected = self._fault(call, "wait", ctx)
            if injected is not None:
                self._finish(op, injected, _result_error(injected, f"injected failure of {call}"))
                return
            with self.lock:
                if op.state != "running":
                    return
                outcome = effect()
            info = outcome[2] if len(outcome) == 3 else None
            self._finish(op, outcome[0], outcome[1], info)

        delay = self.delays.get(call, 0.0)
        if delay:
            op.timer = threading.Timer(delay, complete)
            op.timer.daemon = True
            op.timer.start()
        else:
            complete()
        return 0

    # ------------------------------------------------------------- operations

    def HcsCreateOperation(self, context: int | None, callback: int | None) -> int:
        with self.lock:
            handle = next(self._ids)
            self.ops[handle] = FakeOp(handle)
            return handle

    def HcsCloseOperation(self, handle: int | None) -> None:
        with self.lock:
            op = self.ops.get(handle or 0)
            if op is None or op.closed:
                self.violations.append(f"HcsCloseOperation: unknown or already closed operation {handle}")
                return
            if op.state == "running":
                self.violations.append(f"HcsCloseOperation: operation of {op.call} closed while in flight")
            op.closed = True

    def _wait(self, handle: int | None, timeout_ms: int, slot: Any, info: Any) -> int:
        op = self._op(handle, "HcsWaitForOperationResult")
        if op is None:
            return s32(E_HANDLE)
        if op.state == "idle":
            return s32(HResult.OPERATION_NOT_STARTED)
        if not op.done.wait(None if timeout_ms == _abi.INFINITE else timeout_ms / 1000):
            return s32(HResult.OPERATION_TIMEOUT)
        if op.doc is not None:
            put(slot, self.alloc.string(op.doc))
        if info and op.info is not None:
            pid, i, o, e = op.info
            info.contents.ProcessId = pid
            info.contents.StdInput = i
            info.contents.StdOutput = o
            info.contents.StdError = e
        return s32(op.hr)

    def HcsWaitForOperationResult(self, handle: int | None, timeout_ms: int, slot: Any) -> int:
        return self._wait(handle, timeout_ms, slot, None)

    def HcsWaitForOperationResultAndProcessInfo(self, handle: int | None, timeout_ms: int, info: Any,
                                                slot: Any) -> int:
        return self._wait(handle, timeout_ms, slot, info)

    def HcsGetOperationResult(self, handle: int | None, slot: Any) -> int:
        op = self._op(handle, "HcsGetOperationResult")
        if op is None:
            return s32(E_HANDLE)
        if op.state == "idle":
            return s32(HResult.OPERATION_NOT_STARTED)
        if op.state == "running":
            return s32(HResult.OPERATION_PENDING)
        if op.doc is not None:
            put(slot, self.alloc.string(op.doc))
        return s32(op.hr)

    def HcsCancelOperation(self, handle: int | None) -> int:
        op = self._op(handle, "HcsCancelOperation")
        if op is None:
            return s32(E_HANDLE)
        self._record("HcsCancelOperation", op.call)
        with self.lock:
            if op.state != "running":
                return 0
            if op.timer is not None:
                op.timer.cancel()
        self._finish(op, E_ABORT, _result_error(E_ABORT, f"{op.call} cancelled"))
        return 0

    # ------------------------------------------------------------- systems

    def _system(self, handle: int | None, call: str) -> FakeSystem | None:
        with self.lock:
            s = self.system_handles.get(handle or 0)
            if s is None:
                self.violations.append(f"{call}: unknown or closed system handle {handle}")
            return s

    def _new_system_handle(self, s: FakeSystem) -> int:
        with self.lock:
            h = next(self._ids)
            self.system_handles[h] = s
            s.handles += 1
            return h

    def HcsCreateComputeSystem(self, id_p: int | None, doc_p: int | None, op: int | None, sd: int | None,
                               out: Any) -> int:
        system_id, text = read_in(id_p) or "", read_in(doc_p)
        self._record("HcsCreateComputeSystem", system_id)
        doc, error = self._check_doc("HcsCreateComputeSystem", "ComputeSystem", text)
        if error is None and doc is not None and "HostedSystem" in doc:
            _, error = self._check_doc("HcsCreateComputeSystem", "HostedSystem", json.dumps(doc["HostedSystem"]))
        with self.lock:
            if error is None and system_id in self.systems:
                return self._sync_failure(op, "HcsCreateComputeSystem", HResult.SYSTEM_ALREADY_EXISTS)
            problem = None if error is not None else self._check_create(system_id, doc)
            if problem is not None:
                hr, message = problem
                self._violation(f"HcsCreateComputeSystem {system_id}: {message}")
                return self._sync_failure(op, "HcsCreateComputeSystem", hr, message)
            system: FakeSystem | None = None
            if error is None:
                kind = "VirtualMachine" if "VirtualMachine" in doc else "Container"
                system = FakeSystem(system_id, doc, kind, doc.get("Owner", ""), hosting=doc.get("HostingSystemId", ""))
                self.systems[system_id] = system
                put(out, self._new_system_handle(system))

        def effect() -> Outcome:
            if error is not None:
                if system is not None:
                    self.systems.pop(system_id, None)
                return HResult.INVALID_JSON, error
            return 0, None

        return self._run(op, "HcsCreateComputeSystem", {"id": system_id}, effect)

    def _check_create(self, system_id: str, doc: dict[str, Any]) -> tuple[int, str] | None:
        container = doc.get("Container")
        if container is not None:
            path = container.get("Storage", {}).get("Path", "")
            if not (path.startswith(VOLUME_PREFIX) and path.endswith("}\\")):
                return E_INVALIDARG, f"Storage.Path {path!r} is not a volume path \\\\?\\Volume{{GUID}}\\"
            if not self._volume_mounted(path):
                return ERROR_NOT_FOUND, f"Storage.Path {path!r} is not a mounted volume"
        hosted = doc.get("HostedSystem")
        if hosted is not None:
            uvm = self.systems.get(doc.get("HostingSystemId", ""))
            if uvm is None or uvm.state != "Running":
                return HResult.INVALID_STATE, "the hosting utility VM is not running"
            container = hosted.get("Container", {})
            for layer in container.get("Storage", {}).get("Layers", []):
                share = layer.get("Path", "").rsplit("\\", 1)[-1]
                if share not in uvm.shares:
                    return ERROR_NOT_FOUND, f"layer {layer.get('Path')!r} is not shared into the utility VM"
        ns = (container or {}).get("Networking", {}).get("Namespace", "")
        if ns and not self._namespace_exists(ns):
            return ERROR_NOT_FOUND, f"network namespace {ns} does not exist"
        return None

    def _sync_failure(self, op_handle: int | None, call: str, hr: int, message: str = "") -> int:
        op = self._op(op_handle, call)
        if op is not None and self._begin(op, call) is None:
            self._finish(op, hr, _result_error(hr, message or _abi.hresult_name(hr)))
        return s32(hr)

    def HcsOpenComputeSystem(self, id_p: int | None, access: int, out: Any) -> int:
        system_id = read_in(id_p) or ""
        self._record("HcsOpenComputeSystem", system_id)
        hr = self._fault("HcsOpenComputeSystem", "call", {"id": system_id})
        if hr is not None:
            return s32(hr)
        with self.lock:
            s = self.systems.get(system_id)
            if s is None:
                return s32(HResult.SYSTEM_NOT_FOUND)
            put(out, self._new_system_handle(s))
            return 0

    def HcsEnumerateComputeSystems(self, query_p: int | None, op: int | None) -> int:
        text = read_in(query_p) or "{}"
        self._record("HcsEnumerateComputeSystems", text)
        query = json.loads(text)
        unknown = set(query) - {"Owners", "Ids", "Names", "Types"}
        if unknown:
            self._violation(f"HcsEnumerateComputeSystems: unknown query keys {sorted(unknown)}")

        def effect() -> Outcome:
            owners = query.get("Owners")
            ids = query.get("Ids")
            out = [{"Id": s.id, "SystemType": s.kind, "Owner": s.owner, "State": s.state,
                    "RuntimeOsType": "Windows"}
                   for s in self.systems.values()
                   if (owners is None or s.owner in owners) and (ids is None or s.id in ids)]
            return 0, json.dumps(out)

        return self._run(op, "HcsEnumerateComputeSystems", {}, effect)

    def HcsStartComputeSystem(self, handle: int | None, op: int | None, options: int | None) -> int:
        s = self._system(handle, "HcsStartComputeSystem")
        if s is None:
            return s32(E_HANDLE)
        self._record("HcsStartComputeSystem", s.id)

        def effect() -> Outcome:
            if s.state != "Created":
                return HResult.INVALID_STATE, _result_error(HResult.INVALID_STATE, f"system is {s.state}")
            if s.kind == "VirtualMachine":
                for path in s.scsi.values():
                    if (s.id, path) not in self.granted:
                        self.violations.append(f"HcsStartComputeSystem {s.id}: {path} was never granted")
                        return HResult.ACCESS_DENIED, _result_error(HResult.ACCESS_DENIED, f"no access to {path}")
            s.state = "Running"
            return 0, None

        if s.kind == "VirtualMachine" and not s.scsi:
            scsi = s.document["VirtualMachine"].get("Devices", {}).get("Scsi", {})
            for ctrl, c in scsi.items():
                for lun, a in c.get("Attachments", {}).items():
                    s.scsi[f"{ctrl}/{lun}"] = a["Path"]
        return self._run(op, "HcsStartComputeSystem", {"id": s.id}, effect)

    def _stop_system(self, s: FakeSystem, exit_type: str) -> None:
        for p in s.processes:
            self._kill(p, 1)
        for other in self.systems.values():
            if other.hosting == s.id and other.state != "Stopped":
                self._stop_system(other, exit_type)
        s.state, s.exit_type = "Stopped", exit_type
        s.stopped.set()

    def _stop_call(self, call: str, exit_type: str, handle: int | None, op: int | None) -> int:
        s = self._system(handle, call)
        if s is None:
            return s32(E_HANDLE)
        self._record(call, s.id)
        with self.lock:
            if s.state == "Stopped":
                return self._sync_failure(op, call, HResult.SYSTEM_ALREADY_STOPPED)

        def effect() -> Outcome:
            if s.state == "Stopped":
                return HResult.SYSTEM_ALREADY_STOPPED, None
            self._stop_system(s, exit_type)
            return 0, None

        return self._run(op, call, {"id": s.id}, effect)

    def HcsShutDownComputeSystem(self, handle: int | None, op: int | None, options: int | None) -> int:
        return self._stop_call("HcsShutDownComputeSystem", "GracefulExit", handle, op)

    def HcsTerminateComputeSystem(self, handle: int | None, op: int | None, options: int | None) -> int:
        return self._stop_call("HcsTerminateComputeSystem", "ForcedExit", handle, op)

    def HcsGetComputeSystemProperties(self, handle: int | None, op: int | None, query_p: int | None) -> int:
        s = self._system(handle, "HcsGetComputeSystemProperties")
        if s is None:
            return s32(E_HANDLE)
        text = read_in(query_p)
        self._record("HcsGetComputeSystemProperties", text or "")
        query, error = self._check_doc("HcsGetComputeSystemProperties", "System_PropertyQuery", text)

        def effect() -> Outcome:
            if error is not None:
                return HResult.INVALID_JSON, error
            types = (query or {}).get("PropertyTypes", [])
            props: dict[str, Any] = {"Id": s.id, "SystemType": s.kind, "RuntimeOsType": "Windows",
                                     "Owner": s.owner, "State": s.state, "Stopped": s.state == "Stopped"}
            if "Statistics" in types:
                s.cpu_100ns += 1_000_000
                props["Statistics"] = {
                    "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "Uptime100ns": s.cpu_100ns * 2,
                    "Processor": {"TotalRuntime100ns": s.cpu_100ns, "RuntimeUser100ns": s.cpu_100ns // 2,
                                  "RuntimeKernel100ns": s.cpu_100ns - s.cpu_100ns // 2},
                    "Memory": {"MemoryUsageCommitBytes": 50 << 20, "MemoryUsageCommitPeakBytes": 60 << 20,
                               "MemoryUsagePrivateWorkingSetBytes": 30 << 20},
                    "Storage": {"ReadCountNormalized": 1, "ReadSizeBytes": 4096, "WriteCountNormalized": 1,
                                "WriteSizeBytes": 8192}}
            if "ProcessList" in types:
                props["ProcessList"] = [{"ProcessId": p.pid, "ImageName": "fake.exe"}
                                        for p in s.processes if not p.exited.is_set()]
            return 0, json.dumps(props)

        return self._run(op, "HcsGetComputeSystemProperties", {"id": s.id}, effect)

    def HcsModifyComputeSystem(self, handle: int | None, op: int | None, req_p: int | None,
                               identity: int | None) -> int:
        s = self._system(handle, "HcsModifyComputeSystem")
        if s is None:
            return s32(E_HANDLE)
        text = read_in(req_p)
        request, error = self._check_doc("HcsModifyComputeSystem", "ModifySettingRequest", text)
        path = (request or {}).get("ResourcePath", "")
        self._record("HcsModifyComputeSystem", f"{s.id} {(request or {}).get('RequestType', '')} {path}")
        if error is None and request is not None:
            error = self._check_settings(s, request)

        def effect() -> Outcome:
            if error is not None:
                return HResult.INVALID_JSON, error
            assert request is not None
            if s.state == "Stopped":
                return HResult.INVALID_STATE, _result_error(HResult.INVALID_STATE, "system is stopped")
            return self._apply_modify(s, request)

        return self._run(op, "HcsModifyComputeSystem", {"id": s.id, "path": path}, effect)

    def _check_settings(self, s: FakeSystem, request: dict[str, Any]) -> str | None:
        path, kind, settings = request["ResourcePath"], request.get("RequestType"), request.get("Settings")
        definition = None
        if path == "Container/Memory/SizeInMB":
            if not isinstance(settings, int) or isinstance(settings, bool) or settings <= 0:
                return self._bad(f"{path}: Settings must be a positive bare integer, got {settings!r}")
            return None
        if path == "Container/Processor":
            definition = "Container_Processor"
        elif path.startswith("VirtualMachine/Devices/Scsi/") and kind == "Add":
            definition = "Attachment"
        elif path == "VirtualMachine/Devices/VirtualSmb/Shares" and kind == "Add":
            definition = "VirtualSmbShare"
        elif path.startswith("VirtualMachine/Devices/NetworkAdapters/") and kind == "Add":
            definition = "NetworkAdapter"
        elif path.startswith("VirtualMachine/") and kind == "Remove":
            return None
        else:
            return self._bad(f"unknown ResourcePath {path!r} for {kind}")
        if (s.kind == "VirtualMachine") != path.startswith("VirtualMachine/"):
            return self._bad(f"{path} does not apply to a {s.kind}")
        errors = self._validate(definition, settings)
        if errors:
            return self._bad("; ".join(errors))
        return None

    def _bad(self, message: str) -> str:
        self._violation(f"HcsModifyComputeSystem: {message}")
        return _result_error(HResult.INVALID_JSON, message)

    def _apply_modify(self, s: FakeSystem, request: dict[str, Any]) -> tuple[int, str | None]:
        path, kind = request["ResourcePath"], request["RequestType"]
        settings: Any = request.get("Settings")
        s.modifications.append(request)
        if path.startswith("VirtualMachine/Devices/Scsi/"):
            key = "/".join(path.split("/")[3:6:2])
            if kind == "Add":
                if (s.id, settings["Path"]) not in self.granted:
                    self.violations.append(f"SCSI hot-add of {settings['Path']} to {s.id} without HcsGrantVmAccess")
                    return HResult.ACCESS_DENIED, _result_error(HResult.ACCESS_DENIED, "not granted")
                s.scsi[key] = settings["Path"]
            else:
                s.scsi.pop(key, None)
        elif path == "VirtualMachine/Devices/VirtualSmb/Shares":
            if kind == "Add":
                s.shares.add(settings["Name"])
            else:
                s.shares.discard((settings or {}).get("Name", ""))
        return 0, None

    def HcsWaitForComputeSystemExit(self, handle: int | None, timeout_ms: int, slot: Any) -> int:
        s = self._system(handle, "HcsWaitForComputeSystemExit")
        if s is None:
            return s32(E_HANDLE)
        if not s.stopped.wait(timeout_ms / 1000):
            return s32(HResult.OPERATION_TIMEOUT)
        put(slot, self.alloc.string(json.dumps({"Status": 0, "ExitType": s.exit_type})))
        return 0

    def HcsCloseComputeSystem(self, handle: int | None) -> None:
        with self.lock:
            s = self.system_handles.pop(handle or 0, None)
            if s is None:
                self.violations.append(f"HcsCloseComputeSystem: unknown or already closed handle {handle}")
                return
            self.calls.append(("HcsCloseComputeSystem", s.id))
            s.handles -= 1
            if s.handles == 0 and s.state == "Stopped":
                self.systems.pop(s.id, None)    # HCS forgets a stopped system once nothing refers to it

    # ------------------------------------------------------------- processes

    def _process(self, handle: int | None, call: str) -> FakeProcess | None:
        with self.lock:
            p = self.process_handles.get(handle or 0)
            if p is None:
                self.violations.append(f"{call}: unknown or closed process handle {handle}")
            return p

    def _new_process_handle(self, p: FakeProcess) -> int:
        with self.lock:
            h = next(self._ids)
            self.process_handles[h] = p
            p.handles += 1
            return h

    def _choose(self, command_line: str) -> Program:
        for needle, program in self.programs:
            if needle in command_line:
                return program
        return self.fallback(command_line)

    def HcsCreateProcess(self, handle: int | None, params_p: int | None, op: int | None, sd: int | None,
                         out: Any) -> int:
        s = self._system(handle, "HcsCreateProcess")
        if s is None:
            return s32(E_HANDLE)
        text = read_in(params_p)
        params, error = self._check_doc("HcsCreateProcess", "ProcessParameters", text)
        self._record("HcsCreateProcess", f"{s.id} {(params or {}).get('CommandLine', '')}")
        with self.lock:
            if error is None and s.state != "Running":
                return self._sync_failure(op, "HcsCreateProcess", HResult.INVALID_STATE, f"system is {s.state}")
            proc: FakeProcess | None = None
            if error is None and params is not None:
                proc = self._spawn(s, params)
                put(out, self._new_process_handle(proc))

        def effect() -> Outcome:
            if error is not None or proc is None:
                return HResult.INVALID_JSON, error
            if self.quirk_create_process_wait_fails:
                # WS2022: the wait fails although the process exists and its handle came back.
                return E_INVALIDARG, None
            return 0, None, (proc.pid, *proc.caller_fds)

        return self._run(op, "HcsCreateProcess", {"id": s.id}, effect)

    def _spawn(self, s: FakeSystem, params: dict[str, Any]) -> FakeProcess:
        console = bool(params.get("EmulateConsole"))
        fds: list[int] = []

        def pipe(wanted: bool) -> tuple[int | None, int | None]:
            if not wanted:
                return None, None
            r, w = os.pipe()
            fds.extend((r, w))
            return r, w

        in_r, in_w = pipe(bool(params.get("CreateStdInPipe")))
        out_r, out_w = pipe(bool(params.get("CreateStdOutPipe")))
        err_r, err_w = pipe(bool(params.get("CreateStdErrPipe")) and not console)
        proc = FakeProcess(next(self._pids), s, params, self._choose(params.get("CommandLine", "")),
                           caller_fds=(in_w, out_r, err_r), stdin_fd=in_r, out_fd=out_w, err_fd=err_w)
        proc.inner_fds = [fd for fd in (in_r, out_w, err_w) if fd is not None]
        s.processes.append(proc)
        threading.Thread(target=self._run_program, args=(proc, console), daemon=True,
                         name=f"fake-hcs-pid{proc.pid}").start()
        return proc

    def _run_program(self, p: FakeProcess, console: bool) -> None:
        prog = p.program
        try:
            if p.out_fd is not None:
                _write_all(p.out_fd, prog.stdout + (prog.stderr if console else b""))
            if p.err_fd is not None:
                _write_all(p.err_fd, prog.stderr)
            if prog.echo_stdin and p.stdin_fd is not None:
                while not p.stop.is_set():
                    chunk = os.read(p.stdin_fd, 65536)
                    if not chunk:
                        break
                    if p.out_fd is not None:
                        _write_all(p.out_fd, chunk)
            elif prog.until_signalled:
                p.stop.wait()
            elif prog.duration:
                p.stop.wait(prog.duration)
        except OSError:
            pass
        with self.lock:
            self._exit(p, prog.exit_code)

    def _exit(self, p: FakeProcess, code: int) -> None:
        if p.exited.is_set():
            return
        p.exit_code = code
        for fd in p.inner_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        p.inner_fds = []
        p.exited.set()

    def _kill(self, p: FakeProcess, code: int) -> None:
        p.stop.set()
        self._exit(p, code)

    def HcsOpenProcess(self, handle: int | None, pid: int, access: int, out: Any) -> int:
        s = self._system(handle, "HcsOpenProcess")
        if s is None:
            return s32(E_HANDLE)
        self._record("HcsOpenProcess", f"{s.id} {pid}")
        with self.lock:
            for p in s.processes:
                if p.pid == pid and not p.exited.is_set():
                    put(out, self._new_process_handle(p))
                    return 0
        return s32(ERROR_NOT_FOUND)

    def HcsGetProcessInfo(self, handle: int | None, op: int | None) -> int:
        p = self._process(handle, "HcsGetProcessInfo")
        if p is None:
            return s32(E_HANDLE)
        self._record("HcsGetProcessInfo", str(p.pid))
        return self._run(op, "HcsGetProcessInfo", {}, lambda: (0, None, (p.pid, *p.caller_fds)))

    def HcsSignalProcess(self, handle: int | None, op: int | None, options_p: int | None) -> int:
        p = self._process(handle, "HcsSignalProcess")
        if p is None:
            return s32(E_HANDLE)
        text = read_in(options_p)
        options, error = self._check_doc("HcsSignalProcess", "SignalProcessOptions", text)
        signal = (options or {}).get("Signal", "")
        self._record("HcsSignalProcess", f"{p.pid} {signal}")
        if p.exited.is_set():
            return self._sync_failure(op, "HcsSignalProcess", HResult.PROCESS_ALREADY_STOPPED)

        def effect() -> Outcome:
            if error is not None:
                return HResult.INVALID_JSON, error
            p.signals.append(signal)
            code = p.program.on_ctrl_shutdown
            if signal in ("CtrlShutdown", "CtrlC", "CtrlBreak", "CtrlClose") and code is not None:
                self._kill(p, code)
            return 0, None

        hr = self._run(op, "HcsSignalProcess", {"pid": p.pid}, effect)
        if hr == 0 and self.signal_blocks_until_exit:
            # servercore: the call does not return before the process is gone.
            p.exited.wait()
        return hr

    def HcsTerminateProcess(self, handle: int | None, op: int | None, options_p: int | None) -> int:
        p = self._process(handle, "HcsTerminateProcess")
        if p is None:
            return s32(E_HANDLE)
        self._record("HcsTerminateProcess", str(p.pid))
        if p.exited.is_set():
            return self._sync_failure(op, "HcsTerminateProcess", HResult.PROCESS_ALREADY_STOPPED)

        def effect() -> Outcome:
            self._kill(p, 1)
            return 0, None

        return self._run(op, "HcsTerminateProcess", {"pid": p.pid}, effect)

    def HcsModifyProcess(self, handle: int | None, op: int | None, settings_p: int | None) -> int:
        p = self._process(handle, "HcsModifyProcess")
        if p is None:
            return s32(E_HANDLE)
        text = read_in(settings_p)
        request, error = self._check_doc("HcsModifyProcess", "ProcessModifyRequest", text)
        self._record("HcsModifyProcess", f"{p.pid} {(request or {}).get('Operation', '')}")
        if p.exited.is_set():
            return self._sync_failure(op, "HcsModifyProcess", HResult.PROCESS_ALREADY_STOPPED)

        def effect() -> Outcome:
            if error is not None:
                return HResult.INVALID_JSON, error
            assert request is not None
            p.modifications.append(request)
            return 0, None

        return self._run(op, "HcsModifyProcess", {"pid": p.pid}, effect)

    def HcsGetProcessProperties(self, handle: int | None, op: int | None, query_p: int | None) -> int:
        p = self._process(handle, "HcsGetProcessProperties")
        if p is None:
            return s32(E_HANDLE)
        return self._run(op, "HcsGetProcessProperties", {}, lambda: (0, json.dumps(_status(p))))

    def HcsWaitForProcessExit(self, handle: int | None, timeout_ms: int, slot: Any) -> int:
        p = self._process(handle, "HcsWaitForProcessExit")
        if p is None:
            return s32(E_HANDLE)
        if not p.exited.wait(timeout_ms / 1000):
            return s32(HResult.OPERATION_TIMEOUT)
        put(slot, self.alloc.string(json.dumps(_status(p))))
        return 0

    def HcsCloseProcess(self, handle: int | None) -> None:
        with self.lock:
            p = self.process_handles.pop(handle or 0, None)
            if p is None:
                self.violations.append(f"HcsCloseProcess: unknown or already closed handle {handle}")
                return
            self.calls.append(("HcsCloseProcess", str(p.pid)))
            p.handles -= 1

    def HcsGrantVmAccess(self, vm_p: int | None, path_p: int | None) -> int:
        vm, path = read_in(vm_p) or "", read_in(path_p) or ""
        self._record("HcsGrantVmAccess", f"{vm} {path}")
        hr = self._fault("HcsGrantVmAccess", "call", {"path": path})
        if hr is not None:
            return s32(hr)
        with self.lock:
            self.granted.add((vm, path))
        return 0

    def HcsRevokeVmAccess(self, vm_p: int | None, path_p: int | None) -> int:
        vm, path = read_in(vm_p) or "", read_in(path_p) or ""
        self._record("HcsRevokeVmAccess", f"{vm} {path}")
        with self.lock:
            self.granted.discard((vm, path))
        return 0


def _status(p: FakeProcess) -> dict[str, Any]:
    return {"ProcessId": p.pid, "Exited": p.exited.is_set(), "ExitCode": p.exit_code or 0, "LastWaitResult": 0}


def _result_error(hr: int, message: str) -> str:
    return json.dumps({"Error": s32(hr), "ErrorMessage": message,
                       "ErrorEvents": [{"Message": message, "Provider": "fake-hcs"}]})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
