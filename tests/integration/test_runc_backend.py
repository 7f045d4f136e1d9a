"""runtime.external.runc against the installed runc: lifecycle, exec, kill, idempotent delete, clear errors."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.base import ObjectNotFound, RuntimeFailure
from runtime.external.runc import Runc, RuncConfig
from tests.harness.bundle import make_rootfs, oci_spec, write_bundle
from tests.harness.daemon import make_workdir
from tests.harness.runc_run import new_id, run_to_exit, subreaper

pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (make deps)")


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Runc, Path, Path]]:
    workdir = make_workdir("runc")
    try:
        rootfs = make_rootfs(workdir / "rootfs")
        with subreaper():
            yield Runc(RuncConfig(root=str(workdir / "state"))), workdir, rootfs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def stdio(bundle: Path) -> tuple[int, int, int]:
    return (os.open(os.devnull, os.O_RDONLY), os.open(bundle / "out", os.O_WRONLY | os.O_CREAT, 0o600),
            os.open(bundle / "err", os.O_WRONLY | os.O_CREAT, 0o600))


def create(runc: Runc, workdir: Path, rootfs: Path, args: list[str]) -> tuple[str, int, Path]:
    cid = new_id()
    bundle = write_bundle(workdir / cid, rootfs, oci_spec(args, cgroups_path=f"/{cid}"))
    fds = stdio(bundle)
    try:
        pid = runc.create(cid, str(bundle), pid_file=str(bundle / "pid"), stdio=fds)
    finally:
        for fd in fds:
            os.close(fd)
    return cid, pid, bundle


def wait_exit(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not exit")


def test_create_start_exit_delete(env: tuple[Runc, Path, Path]) -> None:
    runc, workdir, rootfs = env
    cid, pid, bundle = create(runc, workdir, rootfs, ["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"])
    state = runc.state(cid)
    assert (state.status, state.pid) == ("created", pid)
    runc.start(cid)
    assert wait_exit(pid) == 3  # the caller (a subreaper, like the shim) reaps the container init
    assert runc.state(cid).status == "stopped"
    assert (bundle / "out").read_text() == "hello\n" and (bundle / "err").read_text() == "oops\n"
    runc.delete(cid)
    with pytest.raises(ObjectNotFound):
        runc.state(cid)
    runc.delete(cid)  # idempotent
    assert not any(cid in p for p in os.listdir("/sys/fs/cgroup/memory"))


def test_kill_all_and_force_delete(env: tuple[Runc, Path, Path]) -> None:
    runc, workdir, rootfs = env
    cid, pid, _ = create(runc, workdir, rootfs, ["/bin/sleep", "300"])
    runc.start(cid)
    assert runc.state(cid).status == "running"
    runc.kill(cid, signal.SIGKILL, all_processes=True)
    assert wait_exit(pid) == -signal.SIGKILL
    runc.delete(cid, force=True)
    assert cid not in runc.list_ids()


def test_exec_runs_a_process_in_the_container(env: tuple[Runc, Path, Path]) -> None:
    runc, workdir, rootfs = env
    cid, pid, bundle = create(runc, workdir, rootfs, ["/bin/sleep", "300"])
    try:
        runc.start(cid)
        process = oci_spec(["/bin/sh", "-c", "hostname; id -u"])["process"]
        fds = (os.open(os.devnull, os.O_RDONLY), os.open(bundle / "exec-out", os.O_WRONLY | os.O_CREAT, 0o600),
               os.open(bundle / "exec-err", os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            exec_pid = runc.exec(cid, process, pid_file=str(bundle / "exec.pid"), stdio=fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert wait_exit(exec_pid) == 0
        assert (bundle / "exec-out").read_text() == "cri-shim-test\n0\n"
    finally:
        runc.kill(cid, signal.SIGKILL, all_processes=True)
        wait_exit(pid)
        runc.delete(cid, force=True)


def test_errors_carry_runcs_message(env: tuple[Runc, Path, Path]) -> None:
    runc, workdir, rootfs = env
    with pytest.raises(ObjectNotFound, match="does not exist"):
        runc.start("cri-shim-security-no-such-container")
    outcome_dir = workdir / "bad"
    spec = oci_spec(["/no/such/binary"])
    with pytest.raises(RuntimeFailure, match="no such file or directory"):
        run_to_exit(runc, outcome_dir, rootfs, spec)
    assert not [i for i in runc.list_ids()], "a failed create must leave no container behind"
