"""What kubelet and critest rely on, checked through the gRPC API of a real daemon: idempotency, name
uniqueness, the CRI -> OCI translation as the container sees it, status fields, logs, updates, stats."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.harness.daemon import Daemon
from tests.harness.lifecycle_env import (BUSYBOX, NGINX, Cri, cgroups_of, container_config, pod_config, rpc_error,
                                         wait_for)

RUNNING, EXITED = pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED
UNKNOWN_ID = "f" * 64


# ---------------------------------------------------------------- idempotency and names


def test_stop_and_remove_of_unknown_ids_succeed(cri: Cri) -> None:
    cri.stop(UNKNOWN_ID)
    cri.remove(UNKNOWN_ID)
    cri.stop_pod(UNKNOWN_ID)
    cri.remove_pod(UNKNOWN_ID)


def test_status_of_unknown_ids_is_not_found(cri: Cri) -> None:
    assert rpc_error(cri.status, UNKNOWN_ID).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(cri.pod_status, UNKNOWN_ID).code() == grpc.StatusCode.NOT_FOUND


def test_double_stop_and_double_remove_succeed(cri: Cri) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    cri.stop(cid)
    cri.stop(cid)
    assert cri.state(cid) == EXITED
    cri.remove(cid)
    cri.remove(cid)
    cri.stop_pod(sid)
    cri.stop_pod(sid)
    assert cri.pod_status(sid).status.state == pb.SANDBOX_NOTREADY
    cri.remove_pod(sid)
    cri.remove_pod(sid)
    assert cri.pods(id=sid) == []


def test_remove_of_a_running_container_kills_and_removes_it(cri: Cri) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    pid = json.loads(cri.status(cid, verbose=True).info["info"])["pid"]
    cri.remove(cid)
    assert cri.containers(id=cid) == []
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)


def test_remove_pod_sandbox_removes_its_containers(cri: Cri) -> None:
    sid = cri.run_pod()
    running = cri.run(sid, container_config("a", command=["sleep", "1000"]))
    created = cri.create(sid, container_config("b", command=["true"]))
    cri.remove_pod(sid)
    assert cri.containers(pod_sandbox_id=sid) == []
    assert rpc_error(cri.status, running).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(cri.status, created).code() == grpc.StatusCode.NOT_FOUND
    assert cgroups_of(sid) == []


def test_duplicate_names_are_already_exists_naming_the_holder(cri: Cri) -> None:
    config = pod_config("dup")
    sid = cri.run_pod(config)
    e = rpc_error(cri.run_pod, config)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and sid in (e.details() or "")
    cid = cri.create(sid, container_config("same", command=["true"]))
    e = rpc_error(cri.create, sid, container_config("same", command=["true"]))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and cid in (e.details() or "")
    assert cri.create(sid, container_config("same", command=["true"], attempt=1)) != cid
    cri.run_pod(pod_config("dup", attempt=1))  # a new attempt of the pod is a new sandbox


def test_names_are_free_again_after_removal(cri: Cri) -> None:
    sid = cri.run_pod(pod_config("reuse"))
    cid = cri.create(sid, container_config("x", command=["true"]))
    cri.remove(cid)
    cri.create(sid, container_config("x", command=["true"]))
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    cri.run_pod(pod_config("reuse"))


def test_bad_requests_are_invalid_argument_naming_the_field(cri: Cri, tmp_path: Path) -> None:
    bad_pod = pod_config("bad")
    bad_pod.metadata.uid = ""
    e = rpc_error(cri.run_pod, bad_pod)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata.uid" in (e.details() or "")
    e = rpc_error(cri.run_pod, pod_config("handler"), "no-such-handler")
    assert e.code() == grpc.StatusCode.NOT_FOUND and "no-such-handler" in (e.details() or "")
    sid = cri.run_pod(pod_config(log_dir=tmp_path))
    e = rpc_error(cri.create, sid, container_config(image="registry.k8s.io/not/pulled:1"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "pull it first" in (e.details() or "")
    e = rpc_error(cri.create, sid, container_config("nul", envs={"X": b"a\0b"}))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "envs[0].value" in (e.details() or "")
    e = rpc_error(cri.create, sid, container_config("home", envs={"HOME": b"/root\n/x"}))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "HOME" in (e.details() or "")
    e = rpc_error(cri.create, sid, container_config("esc", log_path="../escape.log"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "log_path" in (e.details() or "")
    assert cri.containers(pod_sandbox_id=sid) == []   # nothing half-created stays


def test_create_in_a_stopped_sandbox_is_failed_precondition(cri: Cri) -> None:
    sid = cri.run_pod()
    cri.stop_pod(sid)
    e = rpc_error(cri.create, sid, container_config(command=["true"]))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------- the translation, as the container sees it


def test_image_defaults_and_overrides_reach_the_process(cri: Cri, tmp_path: Path) -> None:
    sid = cri.run_pod(pod_config(log_dir=tmp_path))
    # No command: the image's CMD runs (busybox look-alike: sh), kept alive by stdin.
    cid = cri.run(sid, container_config("default", stdin=True, log_path="d.log"))
    assert cri.state(cid) == RUNNING
    out = cri.exec_sync(cid, ["sh", "-c", "pwd; echo $HOSTNAME"])
    assert out.stdout.decode().splitlines() == ["/", cri.pod_status(sid).status.metadata.name]
    # command + args + working dir + envs (bytes, not UTF-8) override.
    cid2 = cri.run(sid, container_config("custom", command=["sh", "-c"], args=['printf "%s|%s|\\n" "$PWD" "$A"; sleep 1000'],
                                         working_dir="/tmp", envs={"A": b"\xff\xfe-bin"}, log_path="c.log"))
    assert wait_for(lambda: (tmp_path / "c.log").exists() and "|" in (tmp_path / "c.log").read_text(errors="replace"))
    line = (tmp_path / "c.log").read_bytes().split(b" ", 3)[3]
    assert line.startswith(b"/tmp|\xff\xfe-bin|"), line
    assert cri.status(cid2).status.log_path == str(tmp_path / "c.log")


def test_image_by_id_and_by_digest_reports_the_pull_image_ref(cri: Cri) -> None:
    ref = cri.pull(BUSYBOX)
    sid = cri.run_pod()
    by_id = cri.create(sid, container_config("by-id", image=ref, command=["true"]))
    image = cri.client.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=10).image
    digest = image.repo_digests[0]
    by_digest = cri.create(sid, container_config("by-digest", image=digest, command=["true"]))
    by_tag = cri.create(sid, container_config("by-tag", image=BUSYBOX, command=["true"]))
    for cid, asked in ((by_id, ref), (by_digest, digest), (by_tag, BUSYBOX)):
        st = cri.status(cid).status
        assert (st.image_id, st.image_ref, st.image.image) == (ref, ref, asked)
        listed = cri.containers(id=cid)[0]
        assert (listed.image_id, listed.image_ref) == (ref, ref)


def test_status_reports_mounts_user_and_exit_reasons(cri: Cri, tmp_path: Path) -> None:
    host = tmp_path / "vol"
    host.mkdir()
    (host / "file").write_text("from the host")
    sid = cri.run_pod()
    mount = pb.Mount(container_path="/data", host_path=str(host), readonly=True, selinux_relabel=True,
                     propagation=pb.PROPAGATION_PRIVATE)
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1001),
                                          run_as_group=pb.Int64Value(value=1002), supplemental_groups=[1234])
    cid = cri.run(sid, container_config("m", command=["sh", "-c", "cat /data/file; id -u; id -G; exit 0"],
                                        mounts=[mount], linux=pb.LinuxContainerConfig(security_context=sc)))
    st = cri.wait_state(cid, EXITED)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert list(st.mounts) == [mount]
    assert (st.user.linux.uid, st.user.linux.gid) == (1001, 1002)
    assert 1234 in st.user.linux.supplemental_groups
    failing = cri.run(sid, container_config("f", command=["sh", "-c", "exit 3"]))
    st = cri.wait_state(failing, EXITED)
    assert (st.exit_code, st.reason) == (3, "Error") and st.finished_at >= st.started_at > 0


def test_readonly_bind_mount_and_readonly_rootfs_are_enforced(cri: Cri, tmp_path: Path) -> None:
    sid = cri.run_pod()
    sc = pb.LinuxContainerSecurityContext(readonly_rootfs=True)
    cid = cri.run(sid, container_config("ro", command=["sleep", "1000"],
                                        mounts=[pb.Mount(container_path="/data", host_path=str(tmp_path),
                                                         readonly=True)],
                                        linux=pb.LinuxContainerConfig(security_context=sc)))
    for path in ("/data/x", "/x"):
        r = cri.exec_sync(cid, ["touch", path])
        assert r.exit_code != 0 and b"Read-only file system" in r.stderr, path
    assert not (tmp_path / "x").exists()


def test_pod_hostname_dns_and_sysctls(cri: Cri) -> None:
    config = pod_config("dns-pod", sysctls={"kernel.shm_rmid_forced": "1"})
    config.hostname = "test-hostname"
    config.dns_config.CopyFrom(pb.DNSConfig(servers=["10.10.10.10"], searches=["google.com"], options=["ndots:8"]))
    sid = cri.run_pod(config)
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    assert cri.exec_sync(cid, ["hostname"]).stdout == b"test-hostname\n"
    resolv = cri.exec_sync(cid, ["cat", "/etc/resolv.conf"]).stdout.decode()
    assert "nameserver 10.10.10.10" in resolv and "search google.com" in resolv and "options ndots:8" in resolv
    assert cri.exec_sync(cid, ["cat", "/proc/sys/kernel/shm_rmid_forced"]).stdout == b"1\n"
    ip = cri.pod_status(sid).status.network.ip
    hosts = cri.exec_sync(cid, ["cat", "/etc/hosts"]).stdout.decode()
    assert ip and f"{ip}\ttest-hostname" in hosts and "127.0.0.1\tlocalhost" in hosts


def test_host_network_pod_sees_the_host_interfaces(cri: Cri) -> None:
    sid = cri.run_pod(pod_config(host_network=True))
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    inside = set(cri.exec_sync(cid, ["ls", "/sys/class/net"]).stdout.decode().split())
    assert inside == set(os.listdir("/sys/class/net"))
    assert not cri.pod_status(sid).status.network.ip


# ---------------------------------------------------------------- exec, logs, updates, stats


def test_exec_sync_output_exit_code_and_timeout(cri: Cri) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    r = cri.exec_sync(cid, ["sh", "-c", "echo -n out; echo -n err >&2; exit 7"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out", b"err", 7)
    started = time.monotonic()
    e = rpc_error(cri.exec_sync, cid, ["sleep", "4321"], 1)
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 15
    assert b"4321" not in cri.exec_sync(cid, ["ps", "-o", "args"]).stdout
    e = rpc_error(cri.exec_sync, cid, [])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_exec_sync_output_is_capped(cri: Cri) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    r = cri.exec_sync(cid, ["sh", "-c", "head -c 20000000 /dev/zero; echo tail >&2"])
    # Both streams and the rest of the response fit in one 16 MiB gRPC message (kubelet's limit).
    assert 15 << 20 < len(r.stdout) + len(r.stderr) < 16 << 20 and r.exit_code == 0


def test_exec_in_a_stopped_container_is_failed_precondition(cri: Cri) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["true"]))
    cri.wait_state(cid, EXITED)
    assert rpc_error(cri.exec_sync, cid, ["true"]).code() == grpc.StatusCode.FAILED_PRECONDITION
    e = rpc_error(cri.rt.Exec, pb.ExecRequest(container_id=cid, cmd=["sh"], stdout=True), timeout=10)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_reopen_container_log_recreates_the_file(cri: Cri, tmp_path: Path) -> None:
    sid = cri.run_pod(pod_config(log_dir=tmp_path))
    cid = cri.run(sid, container_config(command=["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
                                        log_path="r.log"))
    log = tmp_path / "r.log"
    assert wait_for(lambda: log.exists() and "tick" in log.read_text())
    log.rename(tmp_path / "r.log.old")
    cri.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
    assert log.exists()
    assert wait_for(lambda: "tick" in log.read_text())
    cri.stop(cid)
    log.unlink()
    e = rpc_error(cri.rt.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and not log.exists()


def test_update_container_resources_applies_to_the_cgroup_and_status(cri: Cri) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    new = pb.LinuxContainerResources(memory_limit_in_bytes=50 << 20, cpu_shares=512, cpu_quota=20000,
                                     cpu_period=100000)
    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=new), timeout=10)
    assert cri.status(cid).status.resources.linux == new
    dirs = {Path(d).parts[4]: Path(d) / cid for d in cgroups_of(sid)}
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(50 << 20)
    cpu = next(v for k, v in dirs.items() if k.startswith("cpu") and (v / "cpu.shares").exists())
    assert (cpu / "cpu.shares").read_text().strip() == "512"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "20000"


def test_stats_have_timestamps_and_cover_running_containers(cri: Cri) -> None:
    sid = cri.run_pod(pod_config(labels={"stats": "yes"}))
    a = cri.run(sid, container_config("a", command=["sleep", "1000"], labels={"k": "v"}))
    cri.run(sid, container_config("b", command=["sleep", "1000"]))
    cri.create(sid, container_config("c", command=["sleep", "1000"]))  # created, not running: not listed
    one = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=a), timeout=10).stats
    assert one.attributes.id == a and one.cpu.timestamp > 0 and one.memory.timestamp > 0
    listed = cri.rt.ListContainerStats(pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(pod_sandbox_id=sid)), timeout=10).stats
    assert len(listed) == 2
    by_label = cri.rt.ListContainerStats(pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(label_selector={"k": "v"})), timeout=10).stats
    assert [s.attributes.id for s in by_label] == [a]
    pod = cri.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid), timeout=10).stats
    assert pod.attributes.id == sid and pod.linux.cpu.timestamp > 0 and len(pod.linux.containers) == 2
    pods = cri.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(
        filter=pb.PodSandboxStatsFilter(label_selector={"stats": "yes"})), timeout=10).stats
    assert [p.attributes.id for p in pods] == [sid]


def test_lists_filter_by_id_prefix_state_pod_and_labels(cri: Cri) -> None:
    s1 = cri.run_pod(pod_config(labels={"group": "one"}))
    s2 = cri.run_pod(pod_config(labels={"group": "two"}))
    c1 = cri.run(s1, container_config("a", command=["sleep", "1000"], labels={"x": "1"}))
    c2 = cri.create(s2, container_config("b", command=["sleep", "1000"]))
    assert [p.id for p in cri.pods(label_selector={"group": "two"})] == [s2]
    assert [p.id for p in cri.pods(id=s1[:10])] == [s1]
    assert [c.id for c in cri.containers(state=pb.ContainerStateValue(state=RUNNING))] == [c1]
    assert [c.id for c in cri.containers(pod_sandbox_id=s2)] == [c2]
    assert [c.id for c in cri.containers(label_selector={"x": "1"})] == [c1]
    cri.stop_pod(s1)
    ready = cri.pods(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert [p.id for p in ready] == [s2]


def test_pod_sandbox_status_echoes_the_config(cri: Cri) -> None:
    annotations = {"io.kubernetes.pod.name": "p", "weird": "  spaces and ünïcode  "}
    sid = cri.run_pod(pod_config("echo", labels={"a": "b"}, annotations=annotations))
    resp = cri.pod_status(sid, verbose=True)
    st = resp.status
    assert (st.id, st.metadata.name, st.state) == (sid, "echo", pb.SANDBOX_READY)
    assert dict(st.labels) == {"a": "b"} and dict(st.annotations) == annotations and st.created_at > 0
    assert resp.timestamp > 0
    info = json.loads(resp.info["info"])
    assert info["id"] == sid and info["config"]["metadata"]["name"] == "echo"


@pytest.mark.parametrize("signal_name,expected_code", [("SIGNAL_SIGINT", 130), ("SIGNAL_RUNTIME_DEFAULT", 143)])
def test_stop_signal_from_the_config(cri: Cri, signal_name: str, expected_code: int) -> None:
    sid = cri.run_pod()
    cid = cri.run(sid, container_config(command=["sleep", "1000"], stop_signal=pb.Signal.Value(signal_name)))
    cri.stop(cid, timeout=10)
    assert cri.status(cid).status.exit_code == expected_code



def test_containers_of_a_pod_share_its_dev_shm(cri: Cri) -> None:
    sid = cri.run_pod()
    a = cri.run(sid, container_config("a", command=["sleep", "1000"]))
    b = cri.run(sid, container_config("b", command=["sleep", "1000"]))
    assert cri.exec_sync(a, ["sh", "-c", "echo shared > /dev/shm/note"]).exit_code == 0
    assert cri.exec_sync(b, ["cat", "/dev/shm/note"]).stdout == b"shared\n"
    other = cri.run(cri.run_pod(), container_config("c", command=["sleep", "1000"]))
    assert cri.exec_sync(other, ["cat", "/dev/shm/note"]).exit_code != 0   # another pod: another /dev/shm


def test_start_phases_are_exported_as_prometheus_histograms(daemon: Daemon, cri: Cri) -> None:
    sid = cri.run_pod()
    cri.run(sid, container_config(command=["sleep", "1000"]))
    port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", daemon.log_text()).group(1))  # type: ignore[union-attr]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for phase in ("name_reservation", "netns", "network_setup", "shim_spawn", "rootfs", "create", "start"):
        count = re.search(rf'cri_shim_lifecycle_phase_duration_seconds_count\{{phase="{phase}"\}} (\S+)', text)
        assert count is not None and float(count.group(1)) >= 1, phase
    assert re.search(r"phase shim_spawn took [0-9.]+ms", daemon.log_text())   # and logged at debug


def test_image_volumes_are_read_only_executable_and_reported(daemon: Daemon, cri: Cri) -> None:
    ref = cri.pull(BUSYBOX)
    sid = cri.run_pod()
    volume = pb.Mount(container_path="/mnt/image-volume", readonly=True,
                      image=pb.ImageSpec(image=ref, user_specified_image=BUSYBOX))
    etc_only = pb.Mount(container_path="/mnt/etc", readonly=True, image=pb.ImageSpec(image=BUSYBOX),
                        image_sub_path="etc")
    cid = cri.run(sid, container_config(command=["sleep", "1000"], mounts=[volume, etc_only]))
    assert cri.exec_sync(cid, ["/mnt/image-volume/bin/ls", "/mnt/image-volume/bin/sh"]).exit_code == 0
    r = cri.exec_sync(cid, ["touch", "/mnt/image-volume/x"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    assert b"passwd" in cri.exec_sync(cid, ["ls", "/mnt/etc"]).stdout
    assert cri.exec_sync(cid, ["ls", "/mnt/etc/bin"]).exit_code != 0   # only /etc of the image
    mounts = cri.status(cid).status.mounts
    assert [m.image.image_ref for m in mounts] == [ref, ref]
    # While the container exists the image's snapshots stay, even if the image is removed; then they go.
    cri.client.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=30)
    assert os.listdir(daemon.root / "snapshots")
    assert cri.exec_sync(cid, ["/mnt/image-volume/bin/true"]).exit_code == 0
    cri.remove(cid)
    assert os.listdir(daemon.root / "snapshots") == []


def test_bad_image_volumes_are_rejected(cri: Cri) -> None:
    sid = cri.run_pod()
    writable = pb.Mount(container_path="/v", readonly=False, image=pb.ImageSpec(image=BUSYBOX))
    e = rpc_error(cri.create, sid, container_config("w", command=["true"], mounts=[writable]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "readonly" in (e.details() or "")
    missing = pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image=BUSYBOX),
                       image_sub_path="no/such/dir")
    e = rpc_error(cri.create, sid, container_config("m", command=["true"], mounts=[missing]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "no/such/dir" in (e.details() or "")
    escape = pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image=BUSYBOX), image_sub_path="../x")
    assert rpc_error(cri.create, sid, container_config("e", command=["true"], mounts=[escape])).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert cri.containers() == []


def test_a_multi_layer_image_volume_shows_every_layer(daemon: Daemon, cri: Cri) -> None:
    cri.pull(NGINX)   # the nginx look-alike has several layers: the volume is an overlay of them
    sid = cri.run_pod()
    volume = pb.Mount(container_path="/mnt/web", readonly=True, image=pb.ImageSpec(image=NGINX))
    cid = cri.run(sid, container_config(command=["sleep", "1000"], mounts=[volume]))
    r = cri.exec_sync(cid, ["sh", "-c", "test -x /mnt/web/bin/sh && test -f /mnt/web/docker-entrypoint.sh && "
                                        "grep overlay /proc/mounts | grep -c /mnt/web"])
    assert (r.exit_code, r.stdout) == (0, b"1\n"), r.stderr


def test_recursive_read_only_covers_sub_mounts(daemon: Daemon, cri: Cri, tmp_path: Path) -> None:
    assert json.loads(daemon.crictl("info").stdout)["runtimeHandlers"][0]["features"]["recursive_read_only_mounts"]
    sub = tmp_path / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "cst-lifecycle-rro", str(sub)], check=True)
    try:
        sid = cri.run_pod()
        plain = pb.Mount(container_path="/plain", host_path=str(tmp_path), readonly=True)
        rro = pb.Mount(container_path="/rro", host_path=str(tmp_path), readonly=True, recursive_read_only=True)
        cid = cri.run(sid, container_config(command=["sleep", "1000"], mounts=[plain, rro]))
        assert cri.exec_sync(cid, ["touch", "/plain/sub/ok"]).exit_code == 0   # ro is not recursive...
        r = cri.exec_sync(cid, ["touch", "/rro/sub/no"])                       # ... rro is
        assert r.exit_code != 0 and b"Read-only file system" in r.stderr
        assert (sub / "ok").exists() and not (sub / "no").exists()
        cri.remove_pod(sid)
    finally:
        subprocess.run(["umount", str(sub)], check=True)


def test_pod_sandbox_metrics_report_the_containers_real_numbers(cri: Cri) -> None:
    descriptors = cri.rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10).descriptors
    keys = {d.name: len(d.label_keys) for d in descriptors}
    assert all(d.help and d.label_keys for d in descriptors) and "container_memory_working_set_bytes" in keys
    sid = cri.run_pod()
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=256)
    cid = cri.run(sid, container_config(command=["sh", "-c", "sleep 1000 & sleep 1000 & wait"],
                                        linux=pb.LinuxContainerConfig(resources=limits)))
    # Both sleeps forked (sh's own command line has "sleep" in it too, so count lines ending in the command).
    assert wait_for(lambda: sum(line.rstrip().endswith(b"sleep 1000")
                                for line in cri.exec_sync(cid, ["ps"]).stdout.splitlines()) == 2)
    pods = cri.rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    [pod] = [p for p in pods if p.pod_sandbox_id == sid]
    [ctr] = pod.container_metrics
    values = {m.name: m.value.value for m in ctr.metrics if len(m.label_values) == 6}
    assert ctr.container_id == cid
    assert values["container_spec_memory_limit_bytes"] == 64 << 20
    assert values["container_spec_cpu_shares"] == 256
    assert values["container_processes"] == 3   # sh and its two sleeps
    assert values["container_memory_usage_bytes"] > 0
    assert all(len(m.label_values) == keys[m.name] for m in [*ctr.metrics, *pod.metrics])
    received = {m.label_values[-1]: m.value.value for m in pod.metrics
                if m.name == "container_network_receive_packets_total"}
    assert set(received) == {"eth0"}   # the pod's interface (CNI), not the host's
