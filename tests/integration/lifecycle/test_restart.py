"""Restart: the daemon is killed with SIGKILL (a failpoint inside run/create/start/stop/remove, or from outside)
and started again on the same directories. Afterwards no half-created object is visible, running containers
still run and are listed, exits that happened meanwhile are reported, leftovers are gone."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness.daemon import Daemon
from tests.harness.lifecycle_env import Cri, Mirror, container_config, lifecycle_daemon, pod_config, wait_for

RUNNING, EXITED = pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED


class Restartable:
    """One daemon's directories, run by successive daemon processes."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.daemon: Daemon | None = None
        self.cri: Cri | None = None

    def start(self, failpoints: str = "") -> Cri:
        workdir = self.daemon.workdir if self.daemon is not None else None
        self.daemon = lifecycle_daemon(self.mirror, {"failpoints": failpoints}, workdir=workdir).start()
        self.cri = Cri(self.daemon.client())
        return self.cri

    def crash(self) -> None:
        """SIGKILL the daemon (no-op if a failpoint already did)."""
        assert self.daemon is not None and self.daemon.proc is not None and self.cri is not None
        if self.daemon.proc.poll() is None:
            self.daemon.kill9()
        self.daemon.proc.wait()
        self.cri.close()

    def expect_crash(self, call: object) -> None:
        """`call` hits a kill failpoint: the RPC fails because the daemon died under it."""
        with pytest.raises(grpc.RpcError) as e:
            call()  # type: ignore[operator]
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        assert self.daemon is not None and self.daemon.proc is not None
        assert self.daemon.proc.wait(10) == -signal.SIGKILL
        assert self.cri is not None
        self.cri.close()

    def close(self) -> None:
        if self.daemon is None:
            return
        if self.daemon.proc is not None and self.daemon.proc.poll() is not None:
            self.start()
        assert self.cri is not None
        self.cri.clean()
        self.cri.close()
        stop_and_clean(self.daemon)


@pytest.fixture
def rs(mirror: Mirror) -> Iterator[Restartable]:
    r = Restartable(mirror)
    yield r
    r.close()


def _leftovers(d: Daemon) -> dict[str, list[str]]:
    known_pods = {p for p in os.listdir(d.root / "sandboxes")}
    return {k: v for k, v in {
        "netns": sorted(set(os.listdir(d.state / "netns")) - known_pods) if (d.state / "netns").exists() else [],
        "pod_state": sorted(set(os.listdir(d.state / "pods")) - known_pods) if (d.state / "pods").exists() else [],
    }.items() if v}


def _pid(cri: Cri, cid: str) -> int:
    return int(json.loads(cri.status(cid, verbose=True).info["info"])["pid"])


def test_running_containers_survive_a_daemon_crash_and_are_listed(rs: Restartable) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    pid = _pid(cri, cid)
    rs.crash()
    cri = rs.start()
    assert [p.id for p in cri.pods()] == [sid] and cri.pods()[0].state == pb.SANDBOX_READY
    assert [(c.id, c.state) for c in cri.containers()] == [(cid, RUNNING)]
    assert _pid(cri, cid) == pid and os.path.exists(f"/proc/{pid}")
    assert cri.exec_sync(cid, ["echo", "still here"]).stdout == b"still here\n"
    # and it can be stopped and new containers made as before
    cri.stop(cid)
    assert cri.state(cid) == EXITED
    cid2 = cri.run(sid, container_config("after", command=["sleep", "1000"]))
    assert cri.state(cid2) == RUNNING


def test_an_exit_while_the_daemon_is_down_is_reported_after_restart(rs: Restartable) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    pid = _pid(cri, cid)
    rs.crash()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    cri = rs.start()
    st = cri.status(cid).status
    assert (st.state, st.exit_code, st.reason) == (EXITED, 137, "Error")
    assert st.finished_at > 0


def test_a_pod_whose_shim_died_is_notready_and_removable(rs: Restartable) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    assert rs.daemon is not None
    shim_pid = int((rs.daemon.state / "pods" / sid / "shim.pid").read_text())
    rs.crash()
    os.kill(shim_pid, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{shim_pid}"), 10)
    cri = rs.start()
    assert cri.pod_status(sid).status.state == pb.SANDBOX_NOTREADY
    assert cri.status(cid).status.state == EXITED
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert cri.pods() == [] and cri.containers() == []


KILL_DURING_RUN = ["sandbox_run.after_reserve", "sandbox_run.after_netns", "sandbox_run.after_network",
                   "sandbox_run.after_shim"]


def _allocated_ips(d: Daemon) -> list[str]:
    """Addresses host-local IPAM holds for pods of this daemon (one file per address)."""
    ipam = d.workdir / "ipam" / "cst-lifecycle"
    return sorted(p.name for p in ipam.iterdir() if p.name[0].isdigit()) if ipam.is_dir() else []


@pytest.mark.parametrize("point", KILL_DURING_RUN)
def test_crash_inside_run_pod_sandbox_leaves_no_half_created_pod(rs: Restartable, point: str) -> None:
    cri = rs.start(f"{point}=kill")
    rs.expect_crash(lambda: cri.run_pod(pod_config("crash-run")))
    cri = rs.start()
    assert cri.pods() == []
    assert rs.daemon is not None and _leftovers(rs.daemon) == {}
    assert os.listdir(rs.daemon.root / "sandboxes") == []
    assert _allocated_ips(rs.daemon) == []   # the pod network made before the crash was torn down
    cri.run_pod(pod_config("crash-run"))   # the name is free again


def test_crash_after_the_pod_is_recorded_ready_keeps_a_working_pod(rs: Restartable) -> None:
    cri = rs.start("sandbox_run.after_ready=kill")
    rs.expect_crash(lambda: cri.run_pod(pod_config("crash-ready")))
    cri = rs.start()
    cri.pull()
    [pod] = cri.pods()
    assert (pod.metadata.name, pod.state) == ("crash-ready", pb.SANDBOX_READY)
    cid = cri.run(pod.id, container_config(command=["sleep", "1000"]))
    assert cri.exec_sync(cid, ["true"]).exit_code == 0


KILL_DURING_CREATE = ["container_create.after_reserve", "container_create.after_bundle",
                      "container_create.after_create"]


@pytest.mark.parametrize("point", KILL_DURING_CREATE)
def test_crash_inside_create_container_leaves_no_half_created_container(rs: Restartable, point: str) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    rs.crash()
    cri = rs.start(f"{point}=kill")
    rs.expect_crash(lambda: cri.create(sid, container_config("crash-create", command=["sleep", "1000"])))
    cri = rs.start()
    assert cri.containers() == []
    assert rs.daemon is not None and os.listdir(rs.daemon.root / "containers") == []
    pod_containers = rs.daemon.state / "pods" / sid / "containers"
    assert not pod_containers.exists() or os.listdir(pod_containers) == []
    cid = cri.run(sid, container_config("crash-create", command=["sleep", "1000"]))   # name free again
    assert cri.state(cid) == RUNNING


@pytest.mark.parametrize("point,expected", [("container_start.before_start", pb.CONTAINER_CREATED),
                                            ("container_start.after_start", RUNNING)])
def test_crash_around_start_container(rs: Restartable, point: str, expected: int) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cid = cri.create(sid, container_config(command=["sleep", "1000"]))
    rs.crash()
    cri = rs.start(f"{point}=kill")
    rs.expect_crash(lambda: cri.start(cid))
    cri = rs.start()
    assert cri.state(cid) == expected
    if expected == pb.CONTAINER_CREATED:
        cri.start(cid)
    assert cri.exec_sync(cid, ["true"]).exit_code == 0


@pytest.mark.parametrize("point", ["container_stop.before_stop", "container_stop.after_stop"])
def test_crash_around_stop_container(rs: Restartable, point: str) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    rs.crash()
    cri = rs.start(f"{point}=kill")
    rs.expect_crash(lambda: cri.stop(cid))
    cri = rs.start()
    cri.stop(cid)   # kubelet retries; either way it ends stopped
    assert cri.state(cid) == EXITED


@pytest.mark.parametrize("point", ["container_remove.before_delete", "container_remove.after_delete"])
def test_crash_inside_remove_container(rs: Restartable, point: str) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    rs.crash()
    cri = rs.start(f"{point}=kill")
    rs.expect_crash(lambda: cri.remove(cid))
    cri = rs.start()
    cri.remove(cid)
    assert cri.containers() == []
    assert rs.daemon is not None and os.listdir(rs.daemon.root / "containers") == []


@pytest.mark.parametrize("point", ["sandbox_stop.before_stop", "sandbox_remove.before_remove"])
def test_crash_inside_stop_and_remove_pod_sandbox(rs: Restartable, point: str) -> None:
    cri = rs.start()
    cri.pull()
    sid = cri.run_pod()
    cri.run(sid, container_config(command=["sleep", "1000"]))
    rs.crash()
    cri = rs.start(f"{point}=kill")
    rs.expect_crash(lambda: (cri.stop_pod(sid), cri.remove_pod(sid)))
    cri = rs.start()
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert cri.pods() == [] and cri.containers() == []
    assert rs.daemon is not None and _leftovers(rs.daemon) == {}


def test_leftovers_without_a_record_are_removed_at_startup(rs: Restartable) -> None:
    rs.start()
    rs.crash()
    assert rs.daemon is not None
    stray = ["a" * 64, "b" * 64]
    (rs.daemon.root / "sandboxes" / stray[0]).mkdir()
    (rs.daemon.root / "containers" / stray[1]).mkdir()
    (rs.daemon.state / "netns").mkdir(exist_ok=True)
    Path(rs.daemon.state / "netns" / stray[0]).touch()
    rs.start()
    assert not (rs.daemon.root / "sandboxes" / stray[0]).exists()
    assert not (rs.daemon.root / "containers" / stray[1]).exists()
    assert not (rs.daemon.state / "netns" / stray[0]).exists()


def test_recovery_is_logged_with_its_counts(rs: Restartable) -> None:
    cri = rs.start()
    cri.pull()
    for _ in range(3):
        sid = cri.run_pod()
        cri.run(sid, container_config(command=["sleep", "1000"]))
    rs.crash()
    rs.start()
    assert rs.daemon is not None
    assert "recovered 3 sandboxes and 3 containers" in rs.daemon.log_text()
