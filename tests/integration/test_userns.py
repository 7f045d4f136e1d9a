"""User namespaces end to end through a real daemon: a pod with userns_options mode POD runs its containers
as the mapped host ids (root inside, uid 1000.. on the host), sees the image's root-owned files as root's
through idmapped layers, and bad mappings are refused at RunPodSandbox with InvalidArgument.

The daemon has its own CNI bridge (`cstuserns0`) so nothing global is shared with other suites.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness.daemon import Daemon, crictl_on_a_terminal
from tests.harness.lifecycle_env import (BUSYBOX, CONFLIST, NGINX, Cri, Mirror, container_config, lifecycle_daemon,
                                         pod_config, rpc_error, start_mirror, wait_for)
from runtime.linux import netns

BRIDGE = "cstuserns0"
SUBNET = "10.231.0.0/16"
HOST_ID = 100000          # first host id of the pods' range (outside any real user on this machine)
SIZE = 65536


@pytest.fixture(scope="module")
def mirror() -> Iterator[Mirror]:
    m = start_mirror((BUSYBOX, NGINX))
    yield m
    m.registry.stop()
    shutil.rmtree(m.hosts, ignore_errors=True)   # not m.close(): that deletes the lifecycle suite's bridge
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def userns_daemon(mirror: Mirror, workdir: Path | None = None) -> Daemon:
    d = lifecycle_daemon(mirror, workdir=workdir)
    (d.cni_conf_dir / "10-cst-lifecycle.conflist").write_text(
        CONFLIST.format(bridge=BRIDGE, subnet=SUBNET, ipam=d.workdir / "ipam"))
    return d.start()


@pytest.fixture(scope="module")
def daemon(mirror: Mirror) -> Iterator[Daemon]:
    d = userns_daemon(mirror)
    yield d
    stop_and_clean(d)


@pytest.fixture
def cri(daemon: Daemon) -> Iterator[Cri]:
    c = Cri(daemon.client())
    c.pull()
    yield c
    c.clean()
    c.close()


def mapping(container_id: int = 0, host_id: int = HOST_ID, length: int = SIZE) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


def userns_pod(uids: list[pb.IDMapping] | None = None, gids: list[pb.IDMapping] | None = None,
               mode: int = pb.POD) -> pb.PodSandboxConfig:
    cfg = pod_config(namespace="userns")
    u = cfg.linux.security_context.namespace_options.userns_options
    u.mode = mode
    u.uids.extend([mapping()] if uids is None else uids)
    u.gids.extend([mapping()] if gids is None else gids)
    return cfg


def userns_container(pod: pb.PodSandboxConfig, command: list[str], **fields: object) -> pb.ContainerConfig:
    cfg = container_config(command=command, **fields)  # type: ignore[arg-type]
    cfg.linux.security_context.namespace_options.CopyFrom(pod.linux.security_context.namespace_options)
    return cfg


def host_ids(pid: int) -> tuple[str, str]:
    """Real uid and gid of a process as the host sees them (/proc/<pid>/status)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["Uid"].split()[0], fields["Gid"].split()[0]


def container_pid(cri: Cri, cid: str) -> int:
    info = json.loads(cri.status(cid, verbose=True).info["info"])
    return int(info["pid"])


def test_handler_advertises_user_namespaces(daemon: Daemon) -> None:
    handlers = json.loads(daemon.crictl("info").stdout)["runtimeHandlers"]
    assert handlers[0]["features"]["user_namespaces"] is True


def test_userns_pod_runs_as_root_inside_and_mapped_uid_on_the_host(cri: Cri) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"]))
    r = cri.exec_sync(cid, ["sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.decode().split("\n")
    assert lines[:2] == ["0", "0"]
    assert lines[2].split() == ["0", str(HOST_ID), str(SIZE)] and lines[3].split() == ["0", str(HOST_ID), str(SIZE)]
    assert host_ids(container_pid(cri, cid)) == (str(HOST_ID), str(HOST_ID))


def test_image_files_owned_by_root_show_as_root_and_writes_stay_in_the_range(cri: Cri) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"]))
    r = cri.exec_sync(cid, ["sh", "-c", "stat -c '%u:%g' /bin /etc/hosts /; echo x > /etc/new && "
                                        "echo y >> /bin/sh.copy && stat -c '%u' /etc/new && "
                                        "touch /dev/shm/f && stat -c '%u' /dev/shm/f"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.decode().split() == ["0:0", "0:0", "0:0", "0", "0"]
    # Capabilities only inside the namespace: what host root owns stays out of reach.
    r = cri.exec_sync(cid, ["stat", "-c", "%u", "/proc/sys/kernel/hostname"])
    assert r.stdout == b"65534\n"     # host root's files: the overflow uid inside


def test_non_root_user_in_userns_pod_maps_into_the_range(cri: Cri) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    cfg = userns_container(pod, ["sleep", "1000"])
    cfg.linux.security_context.run_as_user.value = 1234
    cid = cri.run(sid, cfg)
    assert cri.exec_sync(cid, ["id", "-u"]).stdout == b"1234\n"
    assert host_ids(container_pid(cri, cid))[0] == str(HOST_ID + 1234)


def test_tty_container_in_userns_pod_gets_its_own_terminal(cri: Cri, tmp_path: Path) -> None:
    pod = userns_pod()
    pod.log_directory = str(tmp_path)
    sid = cri.run_pod(pod)
    cid = cri.run(sid, userns_container(pod, ["sh", "-c", "tty && id -u && stat -c %u /dev/pts/0"], tty=True,
                                        log_path="tty.log"))
    assert cri.wait_state(cid, pb.CONTAINER_EXITED).exit_code == 0
    words = [line.split(" ", 3)[-1].strip() for line in (tmp_path / "tty.log").read_text().splitlines()]
    assert words == ["/dev/pts/0", "0", "0"], words     # the terminal is root's inside, not the overflow id


def test_exec_with_a_tty_in_userns_pod_owns_its_terminal(cri: Cri, daemon: Daemon) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"]))
    out = crictl_on_a_terminal(daemon, ["exec", "-it", cid, "sh", "-c",
                                        "echo uid=$(id -u) tty-owner=$(stat -c %u $(tty)) end"], b" end")
    assert b"uid=0 tty-owner=0 end" in out, out


def test_image_volumes_in_userns_pod_show_root_owned_files_as_root(cri: Cri) -> None:
    cri.pull(NGINX)   # several layers: an overlay of idmapped layers; busybox (the rootfs image): a bind
    pod = userns_pod()
    sid = cri.run_pod(pod)
    web = pb.Mount(container_path="/mnt/web", readonly=True, image=pb.ImageSpec(image=NGINX))
    box = pb.Mount(container_path="/mnt/box", readonly=True, image=pb.ImageSpec(image=BUSYBOX), image_sub_path="bin")
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"], mounts=[web, box]))
    r = cri.exec_sync(cid, ["stat", "-c", "%u:%g", "/mnt/web/docker-entrypoint.sh", "/mnt/web/bin", "/mnt/box/sh"])
    assert r.stdout.split() == [b"0:0"] * 3, (r.stdout, r.stderr)


def test_userns_pod_sysctls_and_read_only_root(cri: Cri) -> None:
    pod = userns_pod()
    pod.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "1000"   # into the netns the user namespace owns
    pod.linux.sysctls["kernel.shmmni"] = "2048"
    sid = cri.run_pod(pod)
    cfg = userns_container(pod, ["sleep", "1000"])
    cfg.linux.security_context.readonly_rootfs = True
    cid = cri.run(sid, cfg)
    r = cri.exec_sync(cid, ["sh", "-c", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni; "
                                        "touch /new"])
    assert r.stdout.split() == [b"1000", b"2048"] and b"Read-only file system" in r.stderr, (r.stdout, r.stderr)


def test_user_outside_the_mapping_is_refused_at_create(cri: Cri) -> None:
    pod = userns_pod([mapping(length=1000)], [mapping(length=1000)])
    sid = cri.run_pod(pod)
    cfg = userns_container(pod, ["true"])
    cfg.linux.security_context.run_as_user.value = 1000
    e = rpc_error(cri.create, sid, cfg)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "uid 1000 is not mapped" in str(e.details())
    cfg = userns_container(pod, ["true"], name="g")
    cfg.linux.security_context.supplemental_groups.append(5000)
    e = rpc_error(cri.create, sid, cfg)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "gid 5000 is not mapped" in str(e.details())
    assert cri.containers() == []


def test_userns_container_output_matches_critest_expectation(cri: Cri) -> None:
    pod = userns_pod([mapping(host_id=1000, length=100000)], [mapping(host_id=1000, length=100000)])
    sid = cri.run_pod(pod)
    cid = cri.run(sid, userns_container(pod, ["cat", "/proc/self/uid_map"]))
    st = cri.wait_state(cid, pb.CONTAINER_EXITED)
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 0, st.message


def test_userns_pod_leaves_no_namespace_pin_after_removal(cri: Cri, daemon: Daemon) -> None:
    sid = cri.run_pod(userns_pod())
    pin = next(daemon.workdir.rglob(f"pods/{sid}/ns/user"))
    assert any(str(pin) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
    cri.stop_pod(sid)
    cri.remove_pod(sid)
    assert wait_for(lambda: str(pin) not in Path("/proc/self/mountinfo").read_text())
    assert not pin.exists()


def test_node_mode_is_the_host_user_namespace(cri: Cri) -> None:
    pod = userns_pod([], [], mode=pb.NODE)
    sid = cri.run_pod(pod)
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"]))
    r = cri.exec_sync(cid, ["cat", "/proc/self/uid_map"])
    assert r.stdout.split() == Path("/proc/self/uid_map").read_bytes().split()
    assert host_ids(container_pid(cri, cid)) == ("0", "0")


def test_pod_without_userns_options_keeps_the_host_user_namespace(cri: Cri) -> None:
    sid = cri.run_pod(pod_config(namespace="userns"))
    cid = cri.run(sid, container_config(command=["sleep", "1000"]))
    assert cri.exec_sync(cid, ["cat", "/proc/self/uid_map"]).stdout.split() == \
        Path("/proc/self/uid_map").read_bytes().split()
    assert host_ids(container_pid(cri, cid)) == ("0", "0")


@pytest.mark.parametrize(("uids", "mode", "words"), [
    ([mapping(), mapping(host_id=HOST_ID * 3)], pb.POD, "exactly one mapping"),
    ([mapping(container_id=1)], pb.POD, "container id 0 must be mapped"),
    ([mapping(host_id=0)], pb.POD, "excludes host id 0"),
    ([mapping(length=0)], pb.POD, "non-empty"),
    ([mapping()], pb.CONTAINER, "CONTAINER is not supported"),
    ([mapping()], pb.TARGET, "TARGET is not supported"),
])
def test_invalid_userns_options_are_refused(cri: Cri, daemon: Daemon, uids: list[pb.IDMapping], mode: int,
                                            words: str) -> None:
    e = rpc_error(cri.run_pod, userns_pod(uids, uids, mode=mode))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and words in str(e.details()), e.details()
    assert "userns_options" in str(e.details())
    assert cri.pods() == []


def test_userns_pod_with_host_network_is_refused(cri: Cri) -> None:
    pod = userns_pod()
    pod.linux.security_context.namespace_options.network = pb.NODE
    e = rpc_error(cri.run_pod, pod)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "host's network" in str(e.details())


def test_container_cannot_leave_or_change_the_pods_user_namespace(cri: Cri) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    other = userns_container(pod, ["true"])
    other.linux.security_context.namespace_options.userns_options.uids[0].host_id = HOST_ID * 2
    e = rpc_error(cri.create, sid, other)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "repeat the pod's" in str(e.details())
    node = container_config(command=["true"])
    node.linux.security_context.namespace_options.userns_options.mode = pb.NODE
    e = rpc_error(cri.create, sid, node)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot leave" in str(e.details())
    priv = userns_container(pod, ["true"])
    priv.linux.security_context.privileged = True
    e = rpc_error(cri.create, sid, priv)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "privileged" in str(e.details())


def test_idmapped_volume_shows_host_root_files_as_root(cri: Cri, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)               # pytest makes it 0700: the mapped root could not even look in
    (tmp_path / "data").write_text("hello")
    os.chown(tmp_path / "data", 0, 0)
    pod = userns_pod()
    sid = cri.run_pod(pod)
    plain = pb.Mount(container_path="/plain", host_path=str(tmp_path))
    mapped = pb.Mount(container_path="/mapped", host_path=str(tmp_path), uidMappings=[mapping()],
                      gidMappings=[mapping()])
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"], mounts=[plain, mapped]))
    r = cri.exec_sync(cid, ["sh", "-c", "stat -c %u /plain/data /mapped/data; echo w > /mapped/new"])
    assert r.stdout.split() == [b"65534", b"0"] and r.exit_code == 0, r.stderr
    assert (tmp_path / "new").stat().st_uid == 0       # written as the container's root = host root on disk
    wrong = pb.Mount(container_path="/x", host_path=str(tmp_path), uidMappings=[mapping(host_id=5)],
                     gidMappings=[mapping(host_id=5)])
    e = rpc_error(cri.create, sid, userns_container(pod, ["true"], name="wrong", mounts=[wrong]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "pod's own user namespace" in str(e.details())


def test_idmapped_volume_on_a_filesystem_without_idmap_support_fails_cleanly(cri: Cri) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    sysfs = pb.Mount(container_path="/k", host_path="/sys/kernel", readonly=True, uidMappings=[mapping()],
                     gidMappings=[mapping()])
    e = rpc_error(cri.create, sid, userns_container(pod, ["true"], mounts=[sysfs]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "MOUNT_ATTR_IDMAP" in str(e.details()), e.details()
    assert cri.containers() == []
    # The pod is still usable afterwards.
    cid = cri.run(sid, userns_container(pod, ["sleep", "1000"], name="after"))
    assert cri.exec_sync(cid, ["id", "-u"]).stdout == b"0\n"


def test_userns_pod_survives_a_daemon_restart(mirror: Mirror) -> None:
    first = userns_daemon(mirror)
    cri = Cri(first.client())
    second: Daemon | None = None
    try:
        cri.pull()
        pod = userns_pod()
        sid = cri.run_pod(pod)
        cid = cri.run(sid, userns_container(pod, ["sleep", "1000"]))
        first.kill9()
        cri.close()
        second = userns_daemon(mirror, workdir=first.workdir)
        cri = Cri(second.client())
        assert cri.exec_sync(cid, ["id", "-u"]).stdout == b"0\n"
        later = cri.run(sid, userns_container(pod, ["sleep", "1000"], name="later"))
        assert host_ids(container_pid(cri, later)) == (str(HOST_ID), str(HOST_ID))
    finally:
        try:
            cri.clean()   # pod shims outlive the daemon: remove the pods even when an assertion failed
        finally:
            cri.close()
            stop_and_clean(second if second is not None else first)


def test_userns_pods_root_owns_its_network_namespace(cri: Cri) -> None:
    pod = userns_pod()
    sid = cri.run_pod(pod)
    cfg = userns_container(pod, ["sleep", "1000"])
    cfg.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    cid = cri.run(sid, cfg)
    # The netns belongs to the pod's user namespace: capabilities granted inside it work on the pod's own
    # network (NET_ADMIN: change a link; NET_BIND_SERVICE, a default one: listen on port 80)...
    listening = "cat /proc/net/tcp /proc/net/tcp6 | grep -c ':0050 '"
    r = cri.exec_sync(cid, ["sh", "-c", "ip link set lo mtu 9000 && ip link show lo | grep -o 'mtu [0-9]*'; "
                                        f"nc -l -p 80 & for i in $(seq 100); do {listening} >/dev/null && break; "
                                        f"sleep 0.05; done; {listening}"])
    assert r.stdout.split() == [b"mtu", b"9000", b"1"], (r.stdout, r.stderr)
    # ... and a container without them has none (the default set has no NET_ADMIN).
    plain = cri.run(sid, userns_container(pod, ["sleep", "1000"], name="plain"))
    r = cri.exec_sync(plain, ["ip", "link", "set", "lo", "mtu", "1500"])
    assert r.exit_code != 0 and b"not permitted" in r.stderr


def test_userns_pod_with_a_shared_pid_namespace(cri: Cri) -> None:
    pod = userns_pod()
    pod.linux.security_context.namespace_options.pid = pb.POD
    sid = cri.run_pod(pod)
    a = cri.run(sid, userns_container(pod, ["sleep", "1000"], name="a"))
    b = cri.run(sid, userns_container(pod, ["sleep", "2000"], name="b"))
    r = cri.exec_sync(b, ["sh", "-c", "ps -o user,args | grep 'sleep 1000' | grep -v grep"])
    assert r.stdout.split()[:3] == [b"root", b"sleep", b"1000"], (r.stdout, r.stderr)
    r = cri.exec_sync(b, ["sh", "-c", "kill $(ps -o pid,args | grep '[s]leep 1000' | { read p rest; echo $p; })"])
    assert r.exit_code == 0, r.stderr    # the same user namespace: its root may signal the other container
    assert cri.wait_state(a, pb.CONTAINER_EXITED).state == pb.CONTAINER_EXITED


def test_netns_helper_failure_leaves_no_pin(tmp_path: Path) -> None:
    """The kernel refuses an empty range: the helper fails, the error says which map, nothing is left."""
    pin = tmp_path / "netns"
    with pytest.raises(netns.NetnsFailure, match="uid_map") as e:
        asyncio.run(netns.create_in_new_userns_async(pin, [(0, HOST_ID, 0)], [(0, HOST_ID, SIZE)]))
    assert "refused" in e.value.message
    assert not pin.exists() and str(pin) not in Path("/proc/self/mountinfo").read_text()


def test_netns_helper_makes_a_netns_owned_by_a_new_user_namespace(tmp_path: Path) -> None:
    pin = tmp_path / "netns"
    asyncio.run(netns.create_in_new_userns_async(pin, [(0, HOST_ID, SIZE)], [(0, HOST_ID, SIZE)]))
    try:
        fd = os.open(pin, os.O_RDONLY)
        try:
            owner = fcntl.ioctl(fd, 0xB701)   # NS_GET_USERNS
        finally:
            os.close(fd)
        try:
            assert os.fstat(owner).st_ino != os.stat("/proc/self/ns/user").st_ino
        finally:
            os.close(owner)
        assert netns.run_in_netns(pin, lambda: socket.if_nameindex()) == [(1, "lo")]
    finally:
        netns.remove(pin)
    assert not pin.exists()
