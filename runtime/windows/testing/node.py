"""A whole fake Windows node for a real daemon process on Linux (TEST ONLY).

The daemon's test-only switch `windows.test_fake_hcs` (off by default) builds
the Windows runtime handlers on this instead of the real DLLs, so crictl and
gRPC can drive full CRI flows for Windows pods through the real services and
the real WindowsBackend, on the same fakes tests/windows uses: the HCS state
machine behind the real ctypes binding (FakeDll), fake HCN, layers and job
objects. Nothing here runs a Windows program: processes are scripted from
their command line (`program_for`):

    cmd /c echo <text>      prints <text> and CRLF, exits 0
    cmd /c exit <n>         exits with <n>
    ping -t <host>          prints a line, runs until signalled (CtrlShutdown -> 0)
    anything else           exits 0 at once, no output

The fakes live in the daemon's memory: a daemon restart loses them (restart
recovery on the fake is covered by tests/windows/test_restart_and_streams.py).
`close()` writes what the fake saw to `<report_dir>/fake-hcs.json`: every HCS
call in order, every document with its schema definition, the HCN, layer and
job calls, and `problems` (schema violations, handles or strings leaked).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.windows import _abi, hcs
from runtime.windows.backend import WindowsPlatform
from runtime.windows.network import NamespaceManager
from runtime.windows.stdio import FdIO, LogSinkFactory
from runtime.windows.testing.fake_dll import FakeDll
from runtime.windows.testing.fake_hcs import FakeHcs, Program
from runtime.windows.testing.fakes import FakeHcn, FakeJobs, FakeLayers
from runtime.windows.testing.schemas import ClosedWorld

REPORT_NAME = "fake-hcs.json"
_ECHO = re.compile(r"^cmd(\.exe)? /c echo (?P<text>.*)$", re.IGNORECASE)
_EXIT = re.compile(r"^cmd(\.exe)? /c exit (?P<code>-?\d+)$", re.IGNORECASE)
_PING = re.compile(r"^ping(\.exe)? -t (?P<host>\S+)", re.IGNORECASE)


def program_for(command_line: str) -> Program:
    """The scripted behaviour of a command line (see the module docstring)."""
    line = command_line.strip().replace('"', "")
    if m := _ECHO.match(line):
        return Program(stdout=m["text"].encode() + b"\r\n")
    if m := _EXIT.match(line):
        return Program(exit_code=int(m["code"]) & 0xFFFFFFFF)
    if m := _PING.match(line):
        return Program(stdout=f"Pinging {m['host']}\r\n".encode(), until_signalled=True, on_ctrl_shutdown=0)
    return Program()


class FakeNode:
    """The fake native APIs of one Windows node, shared by every handler of a daemon."""

    def __init__(self, hcs_schema: Path, report_dir: Path) -> None:
        self.report_dir = report_dir
        self.schema = ClosedWorld(hcs_schema)
        self.layers = FakeLayers()
        self.hcn = FakeHcn()
        self.jobs = FakeJobs()
        self.jobs.fallback = program_for
        self.hcs = FakeHcs(self.schema.errors, volume_mounted=self.layers.is_mounted,
                           namespace_exists=lambda ns: ns in self.hcn.namespaces)
        self.hcs.fallback = program_for
        self._dll = FakeDll(self.hcs, _abi.COMPUTECORE)
        hcs.bind(self._dll, _abi.COMPUTECORE)
        self.api = hcs.ComputeCoreApi(self._dll, self.hcs.alloc.free)

    def platform(self, log_sink: LogSinkFactory, instance: str,
                 resolve_path: Callable[[str], str] = lambda p: p) -> WindowsPlatform:
        return WindowsPlatform(hcs=self.api, layers=self.layers, jobs=self.jobs, hcs_io=FdIO(), job_io=FdIO(),
                               log_sink=log_sink, namespaces=NamespaceManager(self.hcn, instance),
                               resolve_path=resolve_path)

    def report(self) -> dict[str, Any]:
        problems = self.hcs.problems()
        if self.layers.mounted:
            problems.append(f"layers still mounted: {sorted(self.layers.mounted)}")
        if self.jobs.open_handles():
            problems.append(f"job handles still open: {self.jobs.open_handles()}")
        if self.hcn.namespaces:
            problems.append(f"HCN namespaces still exist: {sorted(self.hcn.namespaces)}")
        return {"calls": [list(c) for c in self.hcs.calls],
                "documents": [[definition, doc] for definition, doc in self.hcs.documents],
                "hcn_calls": [list(c) for c in self.hcn.calls],
                "layer_calls": [list(c) for c in self.layers.calls],
                "job_calls": [list(c) for c in self.jobs.calls],
                "problems": problems}

    def close(self) -> None:
        """Write the report, then stop the scripted processes still running (daemon shutdown)."""
        self.report_dir.mkdir(parents=True, exist_ok=True)
        target = self.report_dir / REPORT_NAME
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report(), indent=1))
        os.replace(tmp, target)
        self.hcs.shutdown()
