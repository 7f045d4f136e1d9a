"""The Windows service host, through a CFUNCTYPE fake of advapi32 and a real child process.

The fake plays the service control manager: it calls ServiceMain through the
function pointer in the service table, keeps the control handler registered
with RegisterServiceCtrlHandlerExW and calls it to stop the service, and
records every SERVICE_STATUS. Running under the real SCM is windows_only.
"""

from __future__ import annotations

import ctypes as C
import sys
import threading
import time
from typing import Any

import pytest

from cri_shim import windows_service as W
from runtime.windows import _abi, hcs
from runtime.windows.testing.fake_dll import FakeDll, read_in


class FakeScm:
    def __init__(self, stop_after: float | None = None, control: int = W.CONTROL_STOP) -> None:
        self.statuses: list[tuple[int, int, int, int, int]] = []
        self.handler: Any = None
        self.service_name = ""
        self.stop_after = stop_after
        self.control = control
        self.replies: list[int] = []

    def StartServiceCtrlDispatcherW(self, table: Any) -> int:
        entry = table[0]
        self.service_name = read_in(entry.lpServiceName) or ""
        main = _abi.SERVICE_MAIN(entry.lpServiceProc)
        arg0 = C.create_string_buffer(self.service_name.encode("utf-16-le") + b"\0\0")
        argv = (C.c_void_p * 1)(C.cast(arg0, C.c_void_p).value)
        main(1, C.cast(argv, C.c_void_p).value)
        return 1

    def RegisterServiceCtrlHandlerExW(self, name: int, handler: Any, context: int | None) -> int:
        assert read_in(name) == self.service_name
        self.handler = handler
        return 0x5E5

    def SetServiceStatus(self, handle: int, status: Any) -> int:
        s = status.contents
        assert handle == 0x5E5 and s.dwServiceType == W.SERVICE_WIN32_OWN_PROCESS
        self.statuses.append((s.dwCurrentState, s.dwControlsAccepted, s.dwWin32ExitCode, s.dwServiceSpecificExitCode,
                              s.dwWaitHint))
        if s.dwCurrentState == W.RUNNING and self.stop_after is not None:
            threading.Timer(self.stop_after, self._stop).start()
        return 1

    def _stop(self) -> None:
        self.replies.append(self.handler(W.CONTROL_INTERROGATE, 0, None, None))
        self.replies.append(self.handler(0x80, 0, None, None))          # a user control we do not handle
        self.replies.append(self.handler(self.control, 0, None, None))


def host(fake: FakeScm, child: list[str], grace: float = 5.0) -> W.ServiceHost:
    dll = FakeDll(fake, _abi.ADVAPI32)
    hcs.bind(dll, _abi.ADVAPI32)
    return W.ServiceHost(W.Advapi32Scm(dll), child, grace_s=grace)


GRACEFUL = [sys.executable, "-c", "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(60)"]
STUBBORN = [sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(60)"]


@pytest.mark.parametrize("control", [W.CONTROL_STOP, W.CONTROL_PRESHUTDOWN])
def test_stop_requests_stop_the_daemon_and_report_stopped(control: int) -> None:
    fake = FakeScm(stop_after=0.3, control=control)
    h = host(fake, GRACEFUL)
    h.run()
    states = [s[0] for s in fake.statuses]
    assert fake.service_name == "cri-shim"
    assert states == [W.START_PENDING, W.RUNNING, W.STOP_PENDING, W.STOPPED]
    assert fake.statuses[1][1] == W.ACCEPT_STOP | W.ACCEPT_SHUTDOWN | W.ACCEPT_PRESHUTDOWN
    assert fake.statuses[2][4] == 10_000                       # wait hint: grace (5 s) + 5 s
    assert fake.statuses[3][2:4] == (0, 0) and h.exit_code == 0
    assert fake.replies == [W.NO_ERROR, W.ERROR_CALL_NOT_IMPLEMENTED, W.NO_ERROR]


def test_an_unexpected_daemon_exit_is_a_service_failure_for_the_recovery_actions() -> None:
    fake = FakeScm()
    host(fake, [sys.executable, "-c", "raise SystemExit(3)"]).run()
    assert [s[0] for s in fake.statuses] == [W.START_PENDING, W.RUNNING, W.STOPPED]
    assert fake.statuses[-1][2:4] == (W.ERROR_SERVICE_SPECIFIC_ERROR, 3)


def test_a_daemon_that_ignores_the_stop_is_killed_after_the_grace_period() -> None:
    fake = FakeScm(stop_after=0.5)
    h = host(fake, STUBBORN, grace=0.5)
    started = time.monotonic()
    h.run()
    assert h.exit_code is not None and h.exit_code < 0          # killed
    assert time.monotonic() - started < 10
    assert [s[0] for s in fake.statuses][-1] == W.STOPPED


def test_a_daemon_that_cannot_start_reports_a_failure() -> None:
    fake = FakeScm()
    host(fake, ["/nonexistent/python"]).run()
    assert [s[0] for s in fake.statuses] == [W.START_PENDING, W.STOPPED]
    assert fake.statuses[-1][2] == W.ERROR_SERVICE_SPECIFIC_ERROR


def test_the_service_command_runs_the_daemon_with_the_config() -> None:
    assert W.daemon_command("C:\\ProgramData\\cri-shim\\config.toml")[1:] == [
        "-m", "cri_shim", "serve", "--config", "C:\\ProgramData\\cri-shim\\config.toml"]


@pytest.mark.windows_only
def test_the_service_starts_and_stops_under_the_real_scm() -> None:
    import subprocess
    subprocess.run(["sc.exe", "start", "cri-shim"], check=True)
    subprocess.run(["sc.exe", "stop", "cri-shim"], check=True)
