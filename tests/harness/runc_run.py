"""Run one bundle to completion through `runtime.external.runc`, as the pod shim will: the caller is a
child subreaper, hands the container its stdio, reaps the init and deletes the container."""

from __future__ import annotations

import ctypes
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.external.runc import Runc
from tests.harness.bundle import write_bundle

PR_SET_CHILD_SUBREAPER = 36


@contextmanager
def subreaper() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants (container inits) while inside the block."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def new_id(prefix: str = "cri-shim-security") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str


def run_to_exit(runc: Runc, workdir: Path, rootfs: Path, spec: dict[str, Any], timeout: float = 20) -> Outcome:
    """create + start + wait + delete; the container's stdout/stderr go to files, read afterwards."""
    cid = new_id()
    spec = {**spec, "linux": {**spec["linux"], "cgroupsPath": f"/{cid}"}}
    bundle = write_bundle(workdir / cid, rootfs, spec)
    out_path, err_path = bundle / "stdout", bundle / "stderr"
    stdin = os.open(os.devnull, os.O_RDONLY)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pid = runc.create(cid, str(bundle), pid_file=str(bundle / "pid"), stdio=(stdin, out, err))
    finally:
        for fd in (stdin, out, err):
            os.close(fd)
    try:
        runc.start(cid)
        status = _wait(pid, timeout)
    finally:
        runc.delete(cid, force=True)
    return Outcome(os.waitstatus_to_exitcode(status), out_path.read_text(), err_path.read_text())


def _wait(pid: int, timeout: float) -> int:
    import time

    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.01)
