"""Run cri-shim as a Windows service: `python -m cri_shim.windows_service --config <file>`.

deploy/windows/install.ps1 registers this command with the service control
manager (SCM). The service process speaks the SCM protocol (advapi32:
StartServiceCtrlDispatcherW, RegisterServiceCtrlHandlerExW, SetServiceStatus,
through ctypes, no pywin32) and supervises the daemon as a child process:

    START_PENDING -> spawn `python -m cri_shim serve ...` -> RUNNING
    STOP / SHUTDOWN / PRESHUTDOWN -> STOP_PENDING (wait hint = grace + 5 s)
        -> CTRL_BREAK to the daemon's process group, wait the grace period, kill -> STOPPED (exit 0)
    the daemon exits on its own -> STOPPED with ERROR_SERVICE_SPECIFIC_ERROR and its exit code,
        so the SCM failure actions (install.ps1: restart after 5 s) bring it back.

`ServiceHost` takes the SCM API and the child command injected; the Linux
tests drive it through CFUNCTYPE fakes of advapi32 and a real child process.
"""

from __future__ import annotations

import argparse
import ctypes as C
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.windows import _abi, hcs
from runtime.windows._marshal import read_wstr, wstr

log = logging.getLogger(__name__)

SERVICE_NAME = "cri-shim"
SERVICE_WIN32_OWN_PROCESS = 0x10
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
ACCEPT_STOP, ACCEPT_SHUTDOWN, ACCEPT_PRESHUTDOWN = 0x1, 0x4, 0x100
CONTROL_STOP, CONTROL_INTERROGATE, CONTROL_SHUTDOWN, CONTROL_PRESHUTDOWN = 0x1, 0x4, 0x5, 0xF
NO_ERROR = 0
ERROR_CALL_NOT_IMPLEMENTED = 120
ERROR_SERVICE_SPECIFIC_ERROR = 1066
CTRL_BREAK_EVENT = 1
CREATE_NEW_PROCESS_GROUP = 0x200


@dataclass(frozen=True)
class Status:
    state: int
    accepted: int = 0
    win32_exit: int = NO_ERROR
    specific_exit: int = 0
    checkpoint: int = 0
    wait_hint_ms: int = 0


class ScmApi(Protocol):
    def run_dispatcher(self, name: str, main: Callable[[list[str]], None]) -> None:
        """Block in the SCM dispatcher; `main` runs on the SCM's thread with the start arguments."""
        ...

    def register_handler(self, name: str, handler: Callable[[int], int]) -> int: ...

    def set_status(self, handle: int, status: Status) -> None: ...


class Advapi32Scm:
    """`ScmApi` over advapi32.dll (bound with `_abi.ADVAPI32`); a CFUNCTYPE fake on Linux."""

    def __init__(self, dll: Any) -> None:
        self._dll = dll
        self._keep: list[Any] = []      # callbacks must outlive the dispatcher

    def run_dispatcher(self, name: str, main: Callable[[list[str]], None]) -> None:
        def service_main(argc: int, argv: int | None) -> None:
            args = []
            if argv:
                vector = C.cast(C.c_void_p(argv), C.POINTER(C.c_void_p))
                args = [read_wstr(vector[i] or 0) for i in range(argc) if vector[i]]
            try:
                main(args)
            except Exception:          # an exception must not unwind into the SCM
                log.exception("service main failed")

        thunk = _abi.SERVICE_MAIN(service_main)
        self._keep.append(thunk)
        name_buf = wstr(name)
        table = (_abi.SERVICE_TABLE_ENTRYW * 2)()
        table[0].lpServiceName = C.cast(name_buf, C.c_void_p).value
        table[0].lpServiceProc = C.cast(thunk, C.c_void_p).value
        if not self._dll.StartServiceCtrlDispatcherW(table):
            raise OSError(f"StartServiceCtrlDispatcherW failed (error {_last_error()}); "
                          "run this through the service control manager, not from a console")

    def register_handler(self, name: str, handler: Callable[[int], int]) -> int:
        def handler_ex(control: int, event_type: int, event_data: int | None, context: int | None) -> int:
            try:
                return handler(control)
            except Exception:
                log.exception("service control handler failed")
                return NO_ERROR

        thunk = _abi.HANDLER_EX(handler_ex)
        self._keep.append(thunk)
        handle = self._dll.RegisterServiceCtrlHandlerExW(wstr(name), thunk, None)
        if not handle:
            raise OSError(f"RegisterServiceCtrlHandlerExW failed (error {_last_error()})")
        return int(handle)

    def set_status(self, handle: int, status: Status) -> None:
        s = _abi.SERVICE_STATUS(SERVICE_WIN32_OWN_PROCESS, status.state, status.accepted, status.win32_exit,
                                status.specific_exit, status.checkpoint, status.wait_hint_ms)
        if not self._dll.SetServiceStatus(handle, C.byref(s)):
            log.error("SetServiceStatus(%d) failed (error %s)", status.state, _last_error())


def _last_error() -> int:
    get: Callable[[], int] | None = getattr(C, "get_last_error", None)
    return get() if get is not None else -1


class ServiceHost:
    def __init__(self, scm: ScmApi, command: Sequence[str], *, grace_s: float = 15.0, name: str = SERVICE_NAME,
                 spawn: Callable[[Sequence[str]], subprocess.Popen[bytes]] | None = None) -> None:
        self._scm = scm
        self._command = list(command)
        self._grace = grace_s
        self._name = name
        self._spawn = spawn or _spawn
        self._stop = threading.Event()
        self._handle = 0
        self.exit_code: int | None = None

    def run(self) -> None:
        self._scm.run_dispatcher(self._name, self.main)

    def handler(self, control: int) -> int:
        if control in (CONTROL_STOP, CONTROL_SHUTDOWN, CONTROL_PRESHUTDOWN):
            self._stop.set()
            return NO_ERROR
        if control == CONTROL_INTERROGATE:
            return NO_ERROR
        return ERROR_CALL_NOT_IMPLEMENTED

    def main(self, args: list[str]) -> None:
        self._handle = self._scm.register_handler(self._name, self.handler)
        self._scm.set_status(self._handle, Status(START_PENDING, wait_hint_ms=30_000))
        try:
            child = self._spawn(self._command)
        except OSError as e:
            log.error("cannot start the daemon %s: %s", self._command, e)
            self._scm.set_status(self._handle, Status(STOPPED, win32_exit=ERROR_SERVICE_SPECIFIC_ERROR,
                                                      specific_exit=1))
            return
        self._scm.set_status(self._handle, Status(RUNNING, ACCEPT_STOP | ACCEPT_SHUTDOWN | ACCEPT_PRESHUTDOWN))
        while not self._stop.wait(0.5):
            code = child.poll()
            if code is not None:
                # An unexpected exit is a failure, so the SCM's recovery actions restart the service.
                log.error("the daemon exited with %s", code)
                self.exit_code = code
                self._scm.set_status(self._handle, Status(STOPPED, win32_exit=ERROR_SERVICE_SPECIFIC_ERROR,
                                                          specific_exit=code & 0xFFFFFFFF))
                return
        self._scm.set_status(self._handle, Status(STOP_PENDING, checkpoint=1,
                                                  wait_hint_ms=int((self._grace + 5) * 1000)))
        self.exit_code = _stop_child(child, self._grace)
        self._scm.set_status(self._handle, Status(STOPPED))


def _spawn(command: Sequence[str]) -> subprocess.Popen[bytes]:
    if sys.platform == "win32":
        return subprocess.Popen(list(command), creationflags=CREATE_NEW_PROCESS_GROUP)
    return subprocess.Popen(list(command), start_new_session=True)


def _stop_child(child: subprocess.Popen[bytes], grace: float) -> int:
    """Ask the daemon to shut down (CTRL_BREAK on Windows = SIGBREAK; SIGTERM elsewhere), then kill."""
    if child.poll() is None:
        child.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
        try:
            return child.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("the daemon did not stop within %.0f s; killing it", grace)
            child.kill()
    return child.wait()


def daemon_command(config: str) -> list[str]:
    return [sys.executable, "-m", "cri_shim", "serve", "--config", config]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cri-shim Windows service host")
    parser.add_argument("--config", required=True, help="the cri-shim config.toml")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds the daemon gets to stop")
    args = parser.parse_args(argv)
    if sys.platform != "win32":
        parser.error("the service host runs on Windows only (use systemd on Linux)")
    advapi32 = getattr(C, "WinDLL")("advapi32.dll", use_last_error=True)
    hcs.bind(advapi32, _abi.ADVAPI32)
    ServiceHost(Advapi32Scm(advapi32), daemon_command(args.config), grace_s=args.grace).run()


if __name__ == "__main__":
    main()
