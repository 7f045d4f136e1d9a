"""Runtime handler "runc": pods of the native pod shim whose containers run through the installed runc.

Through the daemon's gRPC API and crictl, on the real kernel: the handler is listed in Status; a container is
created, started, exec'd into, logged, stopped and removed; exit codes are recorded; a daemon killed with
SIGKILL recovers the pod; what a container observes is what the same container observes natively; runc's
state (`<state>/runc/pods/<pod>/runc`) and the rootfs mount go with the container and the pod.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness.daemon import TMP_BASE, Daemon, crictl_on_a_terminal, make_workdir
from tests.harness.lifecycle_env import (Cri, Mirror, container_config, lifecycle_daemon, pod_config, rpc_error,
                                         wait_for)

pytestmark = pytest.mark.skipif(not os.access("/usr/sbin/runc", os.X_OK), reason="runc is not installed (make deps)")

RUNC = "/usr/sbin/runc"
RUNNING, EXITED = pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED
# This module's own CNI network (picked before the lifecycle suite's: first by name).
BRIDGE = "runch0"
CONFLIST = """{{
  "cniVersion": "1.0.0", "name": "cst-runch",
  "plugins": [{{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
               "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.227.0.0/16"}}]], "dataDir": "{ipam}"}}}}]
}}
"""
STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups")


def runc_daemon(mirror: Mirror, workdir: Path | None = None) -> Daemon:
    d = lifecycle_daemon(mirror, extra={"runtime": {"runc_path": RUNC}}, workdir=workdir)
    (d.cni_conf_dir / "00-runch.conflist").write_text(CONFLIST.format(bridge=BRIDGE, ipam=d.workdir / "ipam"))
    return d


@pytest.fixture(scope="module")
def daemon(mirror: Mirror) -> Iterator[Daemon]:
    d = runc_daemon(mirror).start()
    yield d
    stop_and_clean(d)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def runc_list(d: Daemon, sid: str) -> list[str]:
    root = d.state / "runc" / "pods" / sid / "runc"
    out = subprocess.run([RUNC, "--root", str(root), "list", "-q"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def pid_of(cri: Cri, cid: str) -> int:
    return int(json.loads(cri.status(cid, verbose=True).info["info"])["pid"])


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def test_status_lists_the_runc_handler_without_unverified_features(cri: Cri) -> None:
    handlers = {h.name: h.features for h in cri.rt.Status(pb.StatusRequest(), timeout=10).runtime_handlers}
    assert set(handlers) == {"", "runc"}
    assert not handlers["runc"].user_namespaces and not handlers["runc"].recursive_read_only_mounts


def test_unknown_handler_is_still_not_found(cri: Cri) -> None:
    e = rpc_error(cri.run_pod, pod_config(), handler="no-such-handler")
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert "runtime handler 'no-such-handler' is not configured" in str(e.details())
    assert "'runc'" in str(e.details())


def test_runc_container_lifecycle_exec_logs_stop_remove(cri: Cri, daemon: Daemon, tmp_path: Path) -> None:
    sid = cri.run_pod(pod_config(log_dir=tmp_path), handler="runc")
    cid = cri.create(sid, container_config(command=["sh", "-c", "echo hello from runc; exec sleep 1000"],
                                           log_path="c.log"))
    assert runc_list(daemon, sid) == [cid]          # runc, not the native init, made it
    cri.start(cid)
    assert cri.state(cid) == RUNNING
    pid = pid_of(cri, cid)
    # `runc start` returns before its init execs, and sh execs sleep later still: wait for that, not assume it.
    assert wait_for(lambda: os.readlink(f"/proc/{pid}/exe") == "/bin/sleep")
    shim_pid = int((daemon.state / "runc" / "pods" / sid / "shim.pid").read_text())
    assert f"PPid:\t{shim_pid}\n" in Path(f"/proc/{pid}/status").read_text()   # reaped by the pod shim
    result = cri.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)
    assert wait_for(lambda: "hello from runc" in (tmp_path / "c.log").read_text())
    logs = daemon.crictl("logs", cid).stdout
    assert "hello from runc" in logs
    assert daemon.crictl("exec", "-s", cid, "cat", "/etc/hostname").stdout.strip() == \
        cri.pod_status(sid).status.metadata.name[:63]
    cri.stop(cid, timeout=10)
    st = cri.status(cid).status
    assert (st.state, st.exit_code) == (EXITED, 143)      # sleep dies of the SIGTERM runc delivered
    rootfs = daemon.root / "containers" / cid / "rootfs"
    cri.remove(cid)
    assert runc_list(daemon, sid) == []
    assert not mounted(str(rootfs))
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert not (daemon.state / "runc" / "pods" / sid).exists()


def test_exit_code_and_reason_are_recorded(cri: Cri) -> None:
    sid = cri.run_pod(handler="runc")
    cid = cri.run(sid, container_config(command=["sh", "-c", "exit 7"]))
    st = cri.wait_state(cid, EXITED)
    assert (st.state, st.exit_code, st.reason) == (EXITED, 7, "Error")
    ok = cri.run(sid, container_config("ok", command=["true"]))
    st = cri.wait_state(ok, EXITED)
    assert (st.exit_code, st.reason) == (0, "Completed")


def test_a_terminal_container_and_a_terminal_exec(cri: Cri, daemon: Daemon, tmp_path: Path) -> None:
    sid = cri.run_pod(pod_config(log_dir=tmp_path), handler="runc")
    cid = cri.run(sid, container_config(command=["sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty; exec sleep 1000"],
                                        log_path="tty.log", tty=True, stdin=True))
    assert wait_for(lambda: "stdin-is-a-tty" in (tmp_path / "tty.log").read_text())
    assert "/dev/pts/0" in (tmp_path / "tty.log").read_text()
    # crictl exec -it on a terminal of its own, as a user types it
    out = crictl_on_a_terminal(daemon, ["exec", "-it", cid, "sh", "-c", "tty; [ -t 1 ] && echo exec-on-a-tty-$((6*7))"],
                               b"exec-on-a-tty-42")
    assert b"/dev/pts/" in out and b"exec-on-a-tty-42" in out, out


def test_update_resources_goes_through_runc(cri: Cri) -> None:
    sid = cri.run_pod(handler="runc")
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20)), timeout=30)
    out = cri.exec_sync(cid, ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                                          "/sys/fs/cgroup/memory.max 2>/dev/null; true"]).stdout.split()
    assert str(96 << 20) in [x.decode() for x in out]


def observe(cri: Cri, handler: str, command: str, log_dir: Path) -> str:
    sid = cri.run_pod(pod_config(sysctls={"kernel.shm_rmid_forced": "1"}, log_dir=log_dir), handler=handler)
    cid = cri.run(sid, container_config(command=["sh", "-c", command], log_path=f"{handler or 'native'}.log",
                                        linux=pb.LinuxContainerConfig(
        resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=256))))
    st = cri.wait_state(cid, EXITED)
    assert st.exit_code == 0, st
    out = container_log(cri, cid)
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    return out


def container_log(cri: Cri, cid: str) -> str:
    """The CRI log file's lines without their timestamp/stream/tag prefix."""
    path = cri.status(cid).status.log_path
    return "\n".join(line.split(" ", 3)[3] for line in Path(path).read_text().splitlines())


PROBES = {
    "status": "grep -E '^(" + "|".join(STATUS_FIELDS) + "):' /proc/self/status",
    # mount point, type and the per-mount flags; runc 1.1 does not mount the v2 hierarchy of a hybrid host
    # (README: "runc handler"), so /sys/fs/cgroup/unified is left out of the comparison.
    "mounts": "awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") { print $5, $(i + 1), $6; break }}' "
              "/proc/self/mountinfo | grep -v '^/sys/fs/cgroup/unified ' | sort",
    "ro-and-masked": "exec 2>/dev/null; for p in /proc/kcore /proc/sys /sys/firmware; do "
                     "if [ -w $p ] || touch $p 2>/dev/null; then echo $p rw; else echo $p ro; fi; "
                     "wc -c < $p 2>/dev/null || echo $p unreadable; done",
    "identity": "hostname; id; ulimit -n; cat /proc/sys/kernel/shm_rmid_forced",
    "cgroup-limits": "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.shares",
    "etc-files": "cat /etc/hosts /etc/resolv.conf | grep -v -e '^#' -e '^10\\.227\\.'",
}


# What runc 1.1 does differently with the same bundle, each listed in the README ("runc handler") with its reason:
# masked directories get a read-only tmpfs without nosuid/nodev/noexec, and the cgroup v1 tmpfs at
# /sys/fs/cgroup stays writable (its hierarchies are read-only in both).
KNOWN_DIFFERENCES = {
    "/proc/acpi tmpfs ro,nosuid,nodev,noexec,relatime": "/proc/acpi tmpfs ro,relatime",
    "/sys/firmware tmpfs ro,nosuid,nodev,noexec,relatime": "/sys/firmware tmpfs ro,relatime",
    "/sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,relatime": "/sys/fs/cgroup tmpfs rw,nosuid,nodev,noexec,relatime",
}


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_the_container_observes_the_same_as_native(cri: Cri, probe: str, tmp_path: Path) -> None:
    native = observe(cri, "", PROBES[probe], tmp_path)
    runc = observe(cri, "runc", PROBES[probe], tmp_path)
    if probe == "identity":   # each pod has its own generated name
        native, runc = native.split("\n", 1)[1], runc.split("\n", 1)[1]
    expected = "\n".join(KNOWN_DIFFERENCES.get(line, line) for line in native.split("\n"))
    assert runc == expected


@pytest.fixture
def own_daemon(mirror: Mirror) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    d = made[-1]
    if d.proc is not None and d.proc.poll() is not None:
        d = runc_daemon(mirror, workdir=d.workdir).start()
    cri = Cri(d.client())
    cri.clean()
    cri.close()
    stop_and_clean(d)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def test_a_daemon_killed_with_sigkill_recovers_runc_pods(mirror: Mirror, own_daemon: list[Daemon]) -> None:
    d = runc_daemon(mirror).start()
    own_daemon.append(d)
    cri = Cri(d.client())
    cri.pull()
    sid = cri.run_pod(handler="runc")
    keep = cri.run(sid, container_config("keep", command=["sleep", "1000"]))
    dies = cri.run(sid, container_config("dies", command=["sleep", "1000"]))
    keep_pid, dies_pid = pid_of(cri, keep), pid_of(cri, dies)
    cri.close()
    d.kill9()
    assert d.proc is not None
    d.proc.wait()
    os.kill(dies_pid, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{dies_pid}"), 10)
    d = runc_daemon(mirror, workdir=d.workdir).start()
    own_daemon.append(d)
    cri = Cri(d.client())
    assert [(p.id, p.state) for p in cri.pods()] == [(sid, pb.SANDBOX_READY)]
    assert cri.state(keep) == RUNNING and pid_of(cri, keep) == keep_pid
    st = cri.status(dies).status
    assert (st.state, st.exit_code) == (EXITED, 137)
    assert cri.exec_sync(keep, ["echo", "still here"]).stdout == b"still here\n"
    cri.stop(keep, timeout=0)
    assert cri.state(keep) == EXITED
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert not (d.state / "runc" / "pods" / sid).exists()
    cri.close()


def test_runc_state_of_a_pod_whose_shim_died_is_cleaned_up(cri: Cri, daemon: Daemon) -> None:
    sid = cri.run_pod(handler="runc")
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    pid = pid_of(cri, cid)
    rootfs = str(daemon.root / "containers" / cid / "rootfs")
    shim_pid = int((daemon.state / "runc" / "pods" / sid / "shim.pid").read_text())
    os.kill(shim_pid, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{shim_pid}"), 10)
    assert wait_for(lambda: cri.pod_status(sid).status.state == pb.SANDBOX_NOTREADY, 20)
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert not os.path.exists(f"/proc/{pid}") or wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    assert not mounted(rootfs)
    assert not (daemon.state / "runc" / "pods" / sid).exists()


def test_a_missing_executable_fails_clearly_and_leaves_nothing(cri: Cri, daemon: Daemon) -> None:
    sid = cri.run_pod(handler="runc")
    e = None
    cid = ""
    try:
        cid = cri.create(sid, container_config(command=["/no/such/binary"]))
        cri.start(cid)
    except grpc.RpcError as err:
        e = err
    assert e is not None and "/no/such/binary" in str(e.details()), e
    if cid:
        st = cri.status(cid).status
        assert st.state == EXITED and st.exit_code != 0
        cri.remove(cid)
    assert runc_list(daemon, sid) == []
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(daemon.root / "containers") in line]


def test_a_runc_handler_that_cannot_be_set_up_leaves_the_daemon_serving_the_native_one(mirror: Mirror) -> None:
    # A state dir that just fits the native pod shim sockets but not <state>/runc/...: the optional handler is
    # left out with a warning instead of the daemon refusing to start.
    workdir = make_workdir() / ("x" * (29 - len(str(TMP_BASE / "dxxxxxxxx")) - 1))
    workdir.mkdir()
    d = runc_daemon(mirror, workdir=workdir)
    assert len(str(d.state)) <= 32 < len(str(d.state / "runc"))
    d.start()
    try:
        client = d.client()
        handlers = [h.name for h in client.runtime.Status(pb.StatusRequest(), timeout=10).runtime_handlers]
        client.close()
        assert handlers == [""]
        assert "no 'runc' runtime handler" in d.log_tail()
    finally:
        stop_and_clean(d)
        shutil.rmtree(workdir.parent, ignore_errors=True)
