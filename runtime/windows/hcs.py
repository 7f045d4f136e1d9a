"""The Host Compute Service v2 API (computecore.dll) behind a small Python interface.

`HcsApi` is what the backend calls: strings in, strings out, one method per
HCS call. `ComputeCoreApi` implements it over a loaded DLL object (a real
`ctypes.WinDLL` on Windows, a CFUNCTYPE fake in the Linux tests), following the
documented operation pattern:

    op = HcsCreateOperation(NULL, NULL)
    hr = HcsXxx(..., op, ...)            -> on failure read HcsGetOperationResult
    HcsWaitForOperationResult(op, ms)    -> on OPERATION_TIMEOUT HcsCancelOperation
    HcsCloseOperation(op)                   always, exactly once

One operation per call; every returned string is freed once by `_marshal.take_wstr`.
Handles carry a reader/writer lock: HCS calls share it, close takes it
exclusively, so a handle is never closed while a call on it is in flight
(hcsshim documents an access violation inside computecore.dll otherwise).
"""

from __future__ import annotations

import ctypes as C
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.base import RuntimeFailure
from runtime.windows import _abi
from runtime.windows._marshal import Free, take_wstr, wstr_in

log = logging.getLogger(__name__)

# hcsshim's default for create/start; shutdown and terminate are bounded separately by the backend.
DEFAULT_TIMEOUT_MS = 240_000
# After HcsCancelOperation the operation still has to complete before it may be closed.
CANCEL_GRACE_MS = 5_000


class HcsError(RuntimeFailure):
    """An HCS call failed. `hr` is the unsigned HRESULT; `result` the parsed ResultError, if any."""

    def __init__(self, call: str, hr: int, result: str | None = None) -> None:
        self.call = call
        self.hr = _abi.unsigned(hr)
        self.result_document = result
        detail = ""
        if result:
            try:
                parsed = json.loads(result)
                detail = f": {parsed.get('ErrorMessage', '')}".rstrip(": ")
            except (ValueError, AttributeError):
                detail = f": {result[:200]}"
        super().__init__(f"{call} failed with {_abi.hresult_name(self.hr)}{detail}")

    @property
    def already_gone(self) -> bool:
        return self.hr in _abi.ALREADY_GONE


class _RWLock:
    """Many concurrent calls, or one close."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(eq=False)
class Handle:
    """An HCS_SYSTEM or HCS_PROCESS value; closed exactly once."""

    value: int
    name: str
    closed: bool = False
    lock: _RWLock = field(default_factory=_RWLock)

    @contextmanager
    def use(self) -> Iterator[int]:
        with self.lock.shared():
            if self.closed:
                raise RuntimeFailure(f"{self.name}: HCS handle already closed")
            yield self.value


class SystemHandle(Handle):
    pass


class ProcessHandle(Handle):
    pass


@dataclass(frozen=True)
class ProcessInfo:
    handle: ProcessHandle
    pid: int
    stdin: int | None      # raw HANDLE values owned by the caller (CloseHandle each)
    stdout: int | None
    stderr: int | None


class HcsApi(Protocol):
    def create_system(self, system_id: str, document: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> SystemHandle: ...
    def open_system(self, system_id: str) -> SystemHandle: ...
    def enumerate_systems(self, query: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str: ...
    def start_system(self, system: SystemHandle, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None: ...
    def shutdown_system(self, system: SystemHandle, timeout_ms: int) -> None: ...
    def terminate_system(self, system: SystemHandle, timeout_ms: int) -> None: ...
    def system_properties(self, system: SystemHandle, query: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str: ...
    def modify_system(self, system: SystemHandle, request: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None: ...
    def wait_system_exit(self, system: SystemHandle, timeout_ms: int) -> str | None: ...
    def close_system(self, system: SystemHandle) -> None: ...
    def create_process(self, system: SystemHandle, parameters: str,
                       timeout_ms: int = DEFAULT_TIMEOUT_MS) -> ProcessInfo: ...
    def open_process(self, system: SystemHandle, pid: int) -> ProcessHandle: ...
    def signal_process(self, process: ProcessHandle, options: str, timeout_ms: int) -> None: ...
    def terminate_process(self, process: ProcessHandle, timeout_ms: int) -> None: ...
    def modify_process(self, process: ProcessHandle, settings: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None: ...
    def wait_process_exit(self, process: ProcessHandle, timeout_ms: int) -> str | None: ...
    def close_process(self, process: ProcessHandle) -> None: ...
    def grant_vm_access(self, vm_id: str, path: str) -> None: ...


def bind(dll: Any, table: dict[str, _abi.Signature]) -> None:
    """Set restype/argtypes of every function of `table` on `dll` (a WinDLL or a fake)."""
    for name, (restype, argtypes) in table.items():
        fn = getattr(dll, name)
        fn.restype = restype
        fn.argtypes = argtypes


def failed(hr: int) -> bool:
    return _abi.unsigned(hr) >= 0x80000000


class ComputeCoreApi:
    """`HcsApi` over computecore.dll. `dll` must already be bound with `_abi.COMPUTECORE`."""

    def __init__(self, dll: Any, free: Free) -> None:
        self._dll = dll
        self._free = free

    # ------------------------------------------------------------- operations

    def _run(self, name: str, call: Callable[[int], int], timeout_ms: int) -> str | None:
        op = self._dll.HcsCreateOperation(None, None)
        if not op:
            raise HcsError(name + " (HcsCreateOperation)", 0x8007000E)  # E_OUTOFMEMORY
        try:
            hr = call(op)
            if failed(hr):
                raise HcsError(name, hr, self._operation_result(op))
            return self._wait(name, op, timeout_ms)
        finally:
            self._dll.HcsCloseOperation(op)

    def _operation_result(self, op: int) -> str | None:
        slot = C.c_void_p()
        self._dll.HcsGetOperationResult(op, C.byref(slot))
        return take_wstr(slot, self._free)

    def _wait(self, name: str, op: int, timeout_ms: int) -> str | None:
        slot = C.c_void_p()
        hr = self._dll.HcsWaitForOperationResult(op, timeout_ms, C.byref(slot))
        doc = take_wstr(slot, self._free)
        if _abi.unsigned(hr) == _abi.HResult.OPERATION_TIMEOUT:
            self._cancel(op)
            raise HcsError(name, hr, doc)
        if failed(hr):
            raise HcsError(name, hr, doc)
        return doc

    def _cancel(self, op: int) -> None:
        """Cancel, then let the operation finish so it can be closed safely."""
        self._dll.HcsCancelOperation(op)
        slot = C.c_void_p()
        self._dll.HcsWaitForOperationResult(op, CANCEL_GRACE_MS, C.byref(slot))
        take_wstr(slot, self._free)

    # ------------------------------------------------------------- systems

    def create_system(self, system_id: str, document: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> SystemHandle:
        sid, doc = wstr_in(system_id), wstr_in(document)
        out = C.c_void_p()
        try:
            self._run("HcsCreateComputeSystem",
                      lambda op: int(self._dll.HcsCreateComputeSystem(sid, doc, op, None, C.byref(out))), timeout_ms)
        except BaseException:
            # HCS hands out the handle before the operation completes; a failed create still owns one.
            if out.value:
                self._dll.HcsCloseComputeSystem(out.value)
            raise
        if not out.value:
            raise HcsError("HcsCreateComputeSystem", 0x80004005)  # E_FAIL: success without a handle
        return SystemHandle(out.value, system_id)

    def open_system(self, system_id: str) -> SystemHandle:
        sid = wstr_in(system_id)
        out = C.c_void_p()
        hr = self._dll.HcsOpenComputeSystem(sid, _abi.GENERIC_ALL, C.byref(out))
        if failed(hr):
            raise HcsError("HcsOpenComputeSystem", hr)
        return SystemHandle(int(out.value or 0), system_id)

    def enumerate_systems(self, query: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str:
        q = wstr_in(query)
        return self._run("HcsEnumerateComputeSystems",
                         lambda op: int(self._dll.HcsEnumerateComputeSystems(q, op)), timeout_ms) or "[]"

    def _system_call(self, name: str, system: SystemHandle, timeout_ms: int, text: str | None = None) -> str | None:
        arg = wstr_in(text)
        fn = getattr(self._dll, name)
        with system.use() as h:
            return self._run(name, lambda op: int(fn(h, op, arg)), timeout_ms)

    def start_system(self, system: SystemHandle, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self._system_call("HcsStartComputeSystem", system, timeout_ms)

    def shutdown_system(self, system: SystemHandle, timeout_ms: int) -> None:
        self._system_call("HcsShutDownComputeSystem", system, timeout_ms)

    def terminate_system(self, system: SystemHandle, timeout_ms: int) -> None:
        self._system_call("HcsTerminateComputeSystem", system, timeout_ms)

    def system_properties(self, system: SystemHandle, query: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str:
        return self._system_call("HcsGetComputeSystemProperties", system, timeout_ms, query) or "{}"

    def modify_system(self, system: SystemHandle, request: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        req = wstr_in(request)
        with system.use() as h:
            self._run("HcsModifyComputeSystem",
                      lambda op: int(self._dll.HcsModifyComputeSystem(h, op, req, None)), timeout_ms)

    def wait_system_exit(self, system: SystemHandle, timeout_ms: int) -> str | None:
        return self._wait_exit("HcsWaitForComputeSystemExit", system, timeout_ms)

    def _wait_exit(self, name: str, handle: Handle, timeout_ms: int) -> str | None:
        slot = C.c_void_p()
        with handle.use() as h:
            hr = getattr(self._dll, name)(h, timeout_ms, C.byref(slot))
        doc = take_wstr(slot, self._free)
        if _abi.unsigned(hr) == _abi.HResult.OPERATION_TIMEOUT:
            return None
        if failed(hr):
            raise HcsError(name, hr, doc)
        return doc or "{}"

    def close_system(self, system: SystemHandle) -> None:
        with system.lock.exclusive():
            if system.closed:
                return
            system.closed = True
            self._dll.HcsCloseComputeSystem(system.value)

    # ------------------------------------------------------------- processes

    def create_process(self, system: SystemHandle, parameters: str,
                       timeout_ms: int = DEFAULT_TIMEOUT_MS) -> ProcessInfo:
        params = wstr_in(parameters)
        out = C.c_void_p()
        info = _abi.HCS_PROCESS_INFORMATION()
        with system.use() as h:
            op = self._dll.HcsCreateOperation(None, None)
            if not op:
                raise HcsError("HcsCreateProcess (HcsCreateOperation)", 0x8007000E)
            try:
                hr = self._dll.HcsCreateProcess(h, params, op, None, C.byref(out))
                if failed(hr):
                    self._close_raw_process(out)
                    raise HcsError("HcsCreateProcess", hr, self._operation_result(op))
                slot = C.c_void_p()
                hr = self._dll.HcsWaitForOperationResultAndProcessInfo(op, timeout_ms, C.byref(info), C.byref(slot))
                doc = take_wstr(slot, self._free)
                if _abi.unsigned(hr) == _abi.HResult.OPERATION_TIMEOUT:
                    self._cancel(op)
                    self._close_raw_process(out)
                    raise HcsError("HcsCreateProcess", hr, doc)
                if failed(hr) and (not out.value or _abi.unsigned(hr) != _abi.HResult.E_INVALIDARG):
                    self._close_raw_process(out)
                    raise HcsError("HcsCreateProcess", hr, doc)
            finally:
                self._dll.HcsCloseOperation(op)
        handle = ProcessHandle(int(out.value or 0), f"{system.name} process")
        if failed(hr):
            # WS2022 quirk (hcsshim System.createProcess): the wait can fail with E_INVALIDARG although
            # a valid process came back; ask for the process information again, and only in that case.
            log.warning("HcsCreateProcess wait failed with %s but returned a process; querying it",
                        _abi.hresult_name(hr))
            try:
                info = self._process_info(handle, timeout_ms)
            except BaseException:
                self.close_process(handle)
                raise
        return ProcessInfo(handle, int(info.ProcessId), _handle_or_none(info.StdInput),
                           _handle_or_none(info.StdOutput), _handle_or_none(info.StdError))

    def _close_raw_process(self, out: C.c_void_p) -> None:
        if out.value:
            self._dll.HcsCloseProcess(out.value)
            out.value = None

    def _process_info(self, process: ProcessHandle, timeout_ms: int) -> _abi.HCS_PROCESS_INFORMATION:
        info = _abi.HCS_PROCESS_INFORMATION()
        with process.use() as h:
            op = self._dll.HcsCreateOperation(None, None)
            if not op:
                raise HcsError("HcsGetProcessInfo (HcsCreateOperation)", 0x8007000E)
            try:
                hr = self._dll.HcsGetProcessInfo(h, op)
                if failed(hr):
                    raise HcsError("HcsGetProcessInfo", hr, self._operation_result(op))
                slot = C.c_void_p()
                hr = self._dll.HcsWaitForOperationResultAndProcessInfo(op, timeout_ms, C.byref(info), C.byref(slot))
                doc = take_wstr(slot, self._free)
                if failed(hr):
                    raise HcsError("HcsGetProcessInfo", hr, doc)
            finally:
                self._dll.HcsCloseOperation(op)
        return info

    def open_process(self, system: SystemHandle, pid: int) -> ProcessHandle:
        out = C.c_void_p()
        with system.use() as h:
            hr = self._dll.HcsOpenProcess(h, pid, _abi.GENERIC_ALL, C.byref(out))
        if failed(hr):
            raise HcsError("HcsOpenProcess", hr)
        return ProcessHandle(int(out.value or 0), f"{system.name} pid {pid}")

    def _process_call(self, name: str, process: ProcessHandle, text: str | None, timeout_ms: int) -> None:
        arg = wstr_in(text)
        fn = getattr(self._dll, name)
        with process.use() as h:
            self._run(name, lambda op: int(fn(h, op, arg)), timeout_ms)

    def signal_process(self, process: ProcessHandle, options: str, timeout_ms: int) -> None:
        self._process_call("HcsSignalProcess", process, options, timeout_ms)

    def terminate_process(self, process: ProcessHandle, timeout_ms: int) -> None:
        self._process_call("HcsTerminateProcess", process, None, timeout_ms)

    def modify_process(self, process: ProcessHandle, settings: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self._process_call("HcsModifyProcess", process, settings, timeout_ms)

    def wait_process_exit(self, process: ProcessHandle, timeout_ms: int) -> str | None:
        return self._wait_exit("HcsWaitForProcessExit", process, timeout_ms)

    def close_process(self, process: ProcessHandle) -> None:
        with process.lock.exclusive():
            if process.closed:
                return
            process.closed = True
            self._dll.HcsCloseProcess(process.value)

    def grant_vm_access(self, vm_id: str, path: str) -> None:
        vid, p = wstr_in(vm_id), wstr_in(path)
        hr = self._dll.HcsGrantVmAccess(vid, p)
        if failed(hr):
            raise HcsError("HcsGrantVmAccess", hr)


def _handle_or_none(value: int | None) -> int | None:
    if not value or value == _abi.INVALID_HANDLE_VALUE:
        return None
    return int(value)
