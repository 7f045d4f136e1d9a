"""Rollback: a failure injected at each step of RunPodSandbox, CreateContainer and StartContainer undoes
everything done so far and answers with a clear status (test-only failpoints, set in the daemon's config)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness.daemon import Daemon
from tests.harness.lifecycle_env import (BUSYBOX, Cri, Events, Mirror, cgroup_parent, container_config,
                                         first_pod_seen, lifecycle_daemon, pod_config, rpc_error, wait_for)


def _cgroups_under_parent() -> list[str]:
    out = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        parent = controller / cgroup_parent().lstrip("/")
        if parent.is_dir():
            out += [str(p) for p in parent.iterdir() if p.is_dir()]
    return out


def _runtime_leftovers(d: Daemon) -> dict[str, list[str]]:
    """What a rolled-back creation must not leave: pod state, netns pins, pod/container dirs, cgroups."""
    found = {
        "pods": os.listdir(d.state / "pods") if (d.state / "pods").exists() else [],
        "netns": os.listdir(d.state / "netns") if (d.state / "netns").exists() else [],
        "sandboxes": os.listdir(d.root / "sandboxes"),
        "containers": os.listdir(d.root / "containers"),
        "cgroups": _cgroups_under_parent(),
    }
    return {k: v for k, v in found.items() if v}


@pytest.fixture
def failing(mirror: Mirror, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Cri]]:
    d = lifecycle_daemon(mirror, {"failpoints": f"{request.param}=error"}).start()
    cri = Cri(d.client())
    try:
        cri.pull()
        yield d, cri
        cri.clean()
    finally:
        cri.close()
        stop_and_clean(d)


SANDBOX_STEPS = ["sandbox_run.after_reserve", "sandbox_run.after_files", "sandbox_run.after_netns",
                 "sandbox_run.after_network", "sandbox_run.after_shim", "sandbox_run.after_ready"]


@pytest.mark.parametrize("failing", SANDBOX_STEPS, indirect=True)
def test_run_pod_sandbox_failure_rolls_back_every_step(failing: tuple[Daemon, Cri]) -> None:
    d, cri = failing
    e = rpc_error(cri.run_pod, pod_config("rollback"))
    assert e.code() == grpc.StatusCode.INTERNAL and "failpoint" in (e.details() or "")
    assert cri.pods() == []
    assert _runtime_leftovers(d) == {}


@pytest.mark.parametrize("failing", ["sandbox_run.after_shim"], indirect=True)
def test_host_network_pod_failure_rolls_back_too(failing: tuple[Daemon, Cri]) -> None:
    d, cri = failing
    assert rpc_error(cri.run_pod, pod_config("host", host_network=True)).code() == grpc.StatusCode.INTERNAL
    assert cri.pods() == [] and _runtime_leftovers(d) == {}


CONTAINER_STEPS = ["container_create.after_reserve", "container_create.after_image",
                   "container_create.after_bundle", "container_create.after_create"]


@pytest.mark.parametrize("failing", CONTAINER_STEPS, indirect=True)
def test_create_container_failure_rolls_back_every_step(failing: tuple[Daemon, Cri]) -> None:
    d, cri = failing
    sid = cri.run_pod(pod_config("ctr-rollback"))
    before = _cgroups_under_parent()
    e = rpc_error(cri.create, sid, container_config("x", command=["sleep", "1000"]))
    assert e.code() == grpc.StatusCode.INTERNAL and "failpoint" in (e.details() or "")
    assert cri.containers() == []
    assert os.listdir(d.root / "containers") == []
    assert _cgroups_under_parent() == before         # the pod's own cgroups only
    pod_dir = d.state / "pods" / sid / "containers"
    assert not pod_dir.exists() or os.listdir(pod_dir) == []
    # The image has no user left: removing it frees its snapshots.
    cri.client.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=30)
    assert os.listdir(d.root / "snapshots") == []
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert _runtime_leftovers(d) == {}


@pytest.mark.parametrize("failing", ["container_start.before_start"], indirect=True)
def test_start_failure_leaves_a_created_container_that_removes_cleanly(failing: tuple[Daemon, Cri]) -> None:
    d, cri = failing
    sid = cri.run_pod()
    cid = cri.create(sid, container_config(command=["sleep", "1000"]))
    e = rpc_error(cri.start, cid)
    assert e.code() == grpc.StatusCode.INTERNAL
    assert cri.state(cid) == pb.CONTAINER_CREATED
    cri.remove(cid)
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert _runtime_leftovers(d) == {}


def test_events_keep_lifecycle_order_when_the_exit_beats_the_start_reply(mirror: Mirror, tmp_path: Path) -> None:
    """StartContainer is held 1 s after the container started, and the container exits at once: its exit is
    recorded while the call is still running, yet subscribers get STARTED before STOPPED. A start that fails
    at execve is StartError and gets STOPPED alone: the container never ran."""
    created, started, stopped = pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT
    d = lifecycle_daemon(mirror, {"failpoints": "container_start.after_start=delay:1"}).start()
    cri = Cri(d.client())
    events = Events(cri)
    try:
        cri.pull()
        sid = first_pod_seen(cri, lambda oid: bool(events.of(oid)), "order")
        quick = cri.create(sid, container_config("quick", command=["sh", "-c", "exit 3"]))
        cri.start(quick)
        assert wait_for(lambda: stopped in events.of(quick))
        assert events.of(quick) == [created, started, stopped]

        bad = tmp_path / "bad"
        bad.write_text("#!/no/such/interpreter\n")   # executable, so create accepts it; execve fails (ENOENT)
        bad.chmod(0o755)
        broken = cri.create(sid, container_config("broken", command=["/bad"], mounts=[
            pb.Mount(container_path="/bad", host_path=str(bad), readonly=True)]))
        assert rpc_error(cri.start, broken).code() != grpc.StatusCode.OK
        st = cri.status(broken).status
        assert (st.state, st.reason) == (pb.CONTAINER_EXITED, "StartError"), st
        assert wait_for(lambda: stopped in events.of(broken))
        assert events.of(broken) == [created, stopped]
    finally:
        try:
            cri.clean()   # pod shims outlive the daemon: remove the pods even when an assertion failed
        finally:
            events.close()
            cri.close()
            stop_and_clean(d)


def test_a_missing_program_fails_create_naming_it_and_leaves_nothing(daemon: Daemon, cri: Cri) -> None:
    sid = cri.run_pod()
    e = rpc_error(cri.create, sid, container_config(command=["/no/such/program"]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/no/such/program" in (e.details() or "") and "args" in (e.details() or "")
    assert cri.containers() == [] and os.listdir(daemon.root / "containers") == []
