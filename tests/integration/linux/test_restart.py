"""Restart survival: the daemon-side process is killed with SIGKILL while pods run, and after a restart.

The "daemon" is tests.harness.linux_driver in a subprocess (a LinuxBackend and
nothing else); killing it leaves the zygote, the pod shims and the containers
running. A new backend reconnects with recover().
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime import base
from runtime.linux.backend import LinuxBackend
from tests.harness.linux_lab import Lab, PodInfo, wait_for

REPO = Path(__file__).resolve().parents[3]


class Driver:
    def __init__(self, lab: Lab, steps: list[dict[str, Any]]) -> None:
        cfg = {"root": str(lab.root), "rootfs": str(lab.rootfs), "steps": steps}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.harness.linux_driver", json.dumps(cfg)],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)

    def next(self, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"driver exited with {self.proc.poll()}"
        out: dict[str, Any] = json.loads(line)
        return out

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def log_lines(path: str) -> int:
    return Path(path).read_text().count("\n") if os.path.exists(path) else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_containers_survive_kill9_of_the_daemon_and_a_new_one_reconciles(lab: Lab) -> None:
    ctl = lab.root / "ctl"
    ctl.mkdir()
    ticker = ["sh", "-c", "while [ ! -e /ctl/stop ]; do echo tick; sleep 0.05; done; exit 5"]
    looper = ["sh", "-c", "while :; do echo loop; sleep 0.05; done"]

    # daemon #1: a pod and a container, then SIGKILL
    d1 = Driver(lab, [{"op": "pod"}])
    pod = d1.next()
    d1.kill9()
    d1 = Driver(lab, [{"op": "recover", "pods": [pod["pod"]], "pod_dirs": {pod["pod"]: pod["pod_dir"]},
                       "cgroup_parents": {pod["pod"]: pod["cgroup_parent"]}},
                      {"op": "container", "pod": pod["pod"], "args": ticker, "mounts": [["/ctl", str(ctl)]]}])
    rec = d1.next()
    assert rec["recovered"][0]["state"] == "ready"
    c1 = d1.next()
    assert wait_until(lambda: log_lines(c1["log"]) > 2)
    d1.kill9()

    # with no daemon: the container runs on, its log grows, and its exit is recorded
    n = log_lines(c1["log"])
    assert wait_until(lambda: log_lines(c1["log"]) > n) and alive(c1["pid"])
    (ctl / "stop").touch()
    assert wait_until(lambda: not alive(c1["pid"]))
    exit_file = Path(pod["pod_dir"].replace(pod["pod_dir"], str(lab.state / "pods" / pod["pod"]))) / \
        "containers" / c1["container"] / "exit.json"
    assert wait_until(exit_file.exists)
    assert json.loads(exit_file.read_text())["exit_code"] == 5

    # daemon #2: recovers (sees the exit), starts another container, is killed mid-create
    d2 = Driver(lab, [{"op": "recover", "pods": [pod["pod"]], "pod_dirs": {pod["pod"]: pod["pod_dir"]},
                       "cgroup_parents": {pod["pod"]: pod["cgroup_parent"]}},
                      {"op": "container", "pod": pod["pod"], "args": looper},
                      {"op": "create_only", "pod": pod["pod"], "args": ["sleep", "1000"]}])
    rec = d2.next()
    assert rec["recovered"][0]["containers"][c1["container"]] == ["exited", 5]
    c2 = d2.next()
    assert d2.next() == {"creating": True}
    # Killed once the shim has the third container created (its state.json), not after a guessed pause.
    states = lab.state / "pods" / pod["pod"] / "containers"
    assert wait_until(lambda: len(list(states.glob("*/state.json"))) == 3)
    d2.kill9()

    # daemon #3 (this process): reconciles created / running / exited, events flow, cleanup is complete
    async def body(b: LinuxBackend) -> None:
        events: list[base.RuntimeEvent] = []
        b.subscribe(events.append)
        [r] = await b.recover([pod["pod"]])
        assert r.status.state == base.SandboxState.READY and r.status.monitor_pid
        states = {c.id: c for c in r.containers}
        assert states[c1["container"]].state == base.ContainerState.EXITED
        assert states[c1["container"]].exit_code == 5 and states[c1["container"]].reason == base.REASON_ERROR
        assert states[c2["container"]].state == base.ContainerState.RUNNING
        created = [c for c in r.containers if c.id not in (c1["container"], c2["container"])]
        assert [c.state for c in created] == [base.ContainerState.CREATED]
        # the recovered containers are fully usable again
        n = log_lines(c2["log"])
        assert await wait_for(lambda: log_lines(c2["log"]) > n)
        res = await b.exec_sync(c2["container"], base.ExecSpec(args=("echo", "still-here")), 10, 4096)
        assert res.stdout == b"still-here\n"
        await b.start_container(created[0].id)
        stopped = await b.stop_container(c2["container"], 0)
        assert stopped.exit_code == 137
        assert await wait_for(lambda: any(e.container_id == c2["container"] and e.kind == base.EventKind.EXITED
                                          for e in events))
        lab.pods.append(PodInfo(id=pod["pod"], dir=Path(pod["pod_dir"]), netns=pod["netns"],
                                cgroup_parent=pod["cgroup_parent"], status=r.status))
    lab.run(body)


def test_a_dead_shim_is_detected_and_reported_and_cleaned_up(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        events: list[base.RuntimeEvent] = []
        b.subscribe(events.append)
        pod = await lab.pod(b)
        other = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"))
        healthy = await lab.container(b, other, ("sleep", "1000"))
        shim = pod.status.monitor_pid
        assert shim
        t0 = time.monotonic()
        os.kill(shim, signal.SIGKILL)
        assert await wait_for(lambda: any(e.kind == base.EventKind.MONITOR_LOST for e in events), 5)
        assert time.monotonic() - t0 < 5
        exits = [e for e in events if e.kind == base.EventKind.EXITED and e.container_id == c.id]
        assert exits and exits[0].status is not None
        assert exits[0].status.state == base.ContainerState.EXITED and "shim died" in exits[0].status.message
        status = await b.sandbox_status(pod.id)
        assert status.state == base.SandboxState.NOTREADY and status.message
        cstatus = await b.container_status(c.id)
        assert cstatus.state == base.ContainerState.EXITED and cstatus.exit_code == 255
        # the other pod is untouched and answers at once
        t0 = time.monotonic()
        res = await b.exec_sync(healthy.id, base.ExecSpec(args=("echo", "ok")), 5, 4096)
        assert res.stdout == b"ok\n" and time.monotonic() - t0 < 2
        # recover() of a dead shim's pod from a fresh backend also reports it exited
        fresh = lab.backend()
        [r] = await fresh.recover([pod.id])
        assert r.status.state == base.SandboxState.NOTREADY
        assert [(x.state, x.exit_code) for x in r.containers] == [(base.ContainerState.EXITED, 255)]
        await fresh.remove_sandbox(pod.id)       # cleans up without the shim: mounts, cgroups, processes
        lab.pods.remove(pod)
        await b.remove_sandbox(pod.id)           # idempotent
    lab.run(body)


def test_recover_is_bounded_when_a_shim_hangs(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        ok = await lab.pod(b)
        shim = pod.status.monitor_pid
        assert shim
        os.kill(shim, signal.SIGSTOP)   # alive but not answering
        try:
            fresh = lab.backend(call_timeout=1.0)
            t0 = time.monotonic()
            results = {r.status.id: r for r in await fresh.recover([pod.id, ok.id])}
            assert time.monotonic() - t0 < 4
            assert results[ok.id].status.state == base.SandboxState.READY
            hung = results[pod.id]
            assert hung.status.state == base.SandboxState.NOTREADY and "does not answer" in hung.status.message
            os.kill(shim, signal.SIGCONT)
            # once it answers again it is READY: a slow shim is not declared dead
            assert (await fresh.sandbox_status(pod.id)).state == base.SandboxState.READY
            await fresh.close()
        finally:
            os.kill(shim, signal.SIGCONT)
    lab.run(body)


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    return asyncio.run(wait_for(predicate, timeout))
