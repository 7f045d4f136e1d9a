"""KSM marks (runtime.ksm): the pod shims' memory is mergeable, a container's never is.

Mergeable mappings show "mg" in their smaps VmFlags. Whether KSM then merges anything depends on the
node running it (/sys/kernel/mm/ksm/run); that saving is measured in bench/runtime.py, not asserted here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime import base
from runtime.linux import host
from runtime.linux.backend import LinuxBackend
from tests.harness.linux_lab import Lab


def mergeable_bytes(smaps: str) -> int:
    """Bytes of the mappings whose VmFlags include "mg"."""
    total = size = 0
    for line in smaps.splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1]) * 1024
        elif line.startswith("VmFlags:") and "mg" in line.split()[1:]:
            total += size
    return total


def test_shims_are_mergeable_and_the_containers_they_start_are_not(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        shim_smaps = Path(f"/proc/{pod.status.monitor_pid}/smaps").read_text()
        assert mergeable_bytes(shim_smaps) > 4 << 20, "the shim's heap and arenas should be marked"
        c = await lab.container(b, pod, ("sleep", "1000"))
        # PID 1 is the container's init; the cat is an exec'd process: both started by the shim after fork.
        script = "cat /proc/1/smaps; echo --; cat /proc/self/smaps"
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", script)), 10, 16 << 20)
        assert r.exit_code == 0, r.stderr
        init, _, exec_ = r.stdout.decode().partition("--\n")
        assert "VmFlags:" in init and "VmFlags:" in exec_
        assert mergeable_bytes(init) == 0 and mergeable_bytes(exec_) == 0
    lab.run(body, ksm="mark")


def test_ksm_off_marks_nothing(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        assert mergeable_bytes(Path(f"/proc/{pod.status.monitor_pid}/smaps").read_text()) == 0
    lab.run(body, ksm="off")


def test_an_unknown_ksm_mode_is_refused_naming_the_field(lab: Lab) -> None:
    with pytest.raises(base.InvalidSpec) as e:
        lab.backend(ksm="always")
    assert "ksm" in e.value.message and "always" in e.value.message


def test_start_ksm_starts_a_stopped_ksm_and_says_why_it_cannot(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.write_text("0\n")
    assert host.start_ksm(run) == ""
    assert run.read_text() == "1"
    assert host.start_ksm(run) == ""                      # already running: left alone
    problem = host.start_ksm(tmp_path / "missing" / "run")
    assert "cannot start KSM" in problem and "missing" in problem


def test_a_zygote_left_with_another_ksm_setting_is_replaced(lab: Lab) -> None:
    """A daemon restarted with another runtime.ksm must not keep forking shims from the old zygote."""
    async def body() -> None:
        first = lab.backend(ksm="off")
        await first.start()           # then "crashes": never closed, its zygote stays
        pid_file = lab.state / "zygote.sock.pid"
        old = int(pid_file.read_text())
        second = lab.backend(ksm="mark")
        try:
            await second.start()
            new = int(pid_file.read_text())
            assert new != old
            assert first._zygote._proc is not None
            assert first._zygote._proc.wait(timeout=5) == -9       # the old one was ended, and is reaped here
            assert mergeable_bytes(Path(f"/proc/{new}/smaps").read_text()) > 4 << 20
        finally:
            await second.close()
    asyncio.run(body())
