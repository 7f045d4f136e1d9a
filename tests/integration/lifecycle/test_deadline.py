"""kubelet's deadline: when it expires during RunPodSandbox or CreateContainer, the work finishes and the retry
with the same metadata gets the finished object (not "name is reserved"); unclaimed, it is cleaned up."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness.daemon import Daemon
from tests.harness.lifecycle_env import Cri, Mirror, container_config, lifecycle_daemon, pod_config, rpc_error, wait_for

SLOW = 2.0   # seconds each slowed step takes; the caller gives up after 0.5


@pytest.fixture
def slow(mirror: Mirror, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Cri]]:
    points = ",".join(f"{p}=delay:{SLOW}" for p in request.param)
    d = lifecycle_daemon(mirror, {"failpoints": points, "creation_claim_timeout": 3.0}).start()
    cri = Cri(d.client())
    try:
        cri.pull()
        yield d, cri
        cri.clean()
    finally:
        cri.close()
        stop_and_clean(d)


@pytest.mark.parametrize("slow", [["sandbox_run.after_shim"]], indirect=True)
def test_retry_after_a_run_pod_sandbox_deadline_gets_the_finished_sandbox(slow: tuple[Daemon, Cri]) -> None:
    d, cri = slow
    config = pod_config("late")
    e = rpc_error(cri.run_pod, config, timeout=0.5)
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cri.pods() == []   # not visible while it is still being made
    sid = cri.run_pod(config, timeout=30)   # the retry waits for it and takes it
    assert [p.id for p in cri.pods()] == [sid]
    assert cri.pod_status(sid).status.state == pb.SANDBOX_READY
    assert len(os.listdir(d.root / "sandboxes")) == 1   # one sandbox made, not two


@pytest.mark.parametrize("slow", [["sandbox_run.after_shim"]], indirect=True)
def test_an_unclaimed_sandbox_is_cleaned_up(slow: tuple[Daemon, Cri]) -> None:
    d, cri = slow
    e = rpc_error(cri.run_pod, pod_config("orphan"), timeout=0.5)
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: len(os.listdir(d.root / "sandboxes")) == 1, 10)   # it was finished...
    assert wait_for(lambda: os.listdir(d.root / "sandboxes") == [] and cri.pods() == [], 20)   # ...then removed
    assert "no retry within" in d.log_text()
    cri.run_pod(pod_config("orphan"))   # and its name is free


@pytest.mark.parametrize("slow", [["container_create.after_create"]], indirect=True)
def test_retry_after_a_create_container_deadline_gets_the_finished_container(slow: tuple[Daemon, Cri]) -> None:
    d, cri = slow
    sid = cri.run_pod()
    config = container_config("late", command=["sleep", "1000"])
    e = rpc_error(cri.create, sid, config, timeout=0.5)
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    cid = cri.create(sid, config, timeout=30)
    assert [c.id for c in cri.containers()] == [cid]
    cri.start(cid)
    assert cri.state(cid) == pb.CONTAINER_RUNNING


@pytest.mark.parametrize("slow", [["container_create.after_create"]], indirect=True)
def test_an_unclaimed_container_is_cleaned_up(slow: tuple[Daemon, Cri]) -> None:
    d, cri = slow
    sid = cri.run_pod()
    e = rpc_error(cri.create, sid, container_config("orphan", command=["sleep", "1000"]), timeout=0.5)
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: len(os.listdir(d.root / "containers")) == 1, 10)
    assert wait_for(lambda: os.listdir(d.root / "containers") == [] and cri.containers() == [], 20)


@pytest.mark.parametrize("slow", [["sandbox_run.after_shim"]], indirect=True)
def test_concurrent_duplicate_requests_get_one_sandbox(slow: tuple[Daemon, Cri]) -> None:
    d, cri = slow
    config = pod_config("twice")
    first = cri.rt.RunPodSandbox.future(pb.RunPodSandboxRequest(config=config), timeout=30)
    second = cri.rt.RunPodSandbox.future(pb.RunPodSandboxRequest(config=config), timeout=30)
    assert first.result().pod_sandbox_id == second.result().pod_sandbox_id
    assert len(cri.pods()) == 1


@pytest.mark.parametrize("slow", [["container_create.after_image"], ["container_create.after_create"]],
                         indirect=True)
def test_removing_the_pod_during_a_create_fails_the_create_and_leaks_nothing(slow: tuple[Daemon, Cri]) -> None:
    d, cri = slow
    sid = cri.run_pod()
    creating = cri.rt.CreateContainer.future(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("racing", command=["sleep", "1000"])), timeout=30)
    assert wait_for(lambda: len(os.listdir(d.root / "containers")) == 1 or creating.done(), 10)
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    try:
        creating.result()   # the create may have won the race: then the pod removal removed the container
    except grpc.RpcError as e:
        # NOT_FOUND (the pod was removed first), FAILED_PRECONDITION (it was stopped first) or UNAVAILABLE
        # (its shim shut down under the create)
        assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.UNAVAILABLE), e.details()
    assert cri.pods() == [] and cri.containers() == []
    assert wait_for(lambda: os.listdir(d.root / "containers") == [] and os.listdir(d.root / "sandboxes") == [])
