"""CreateContainer's CRI -> OCI translation rules and the lifecycle's small pure helpers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument, Unimplemented
from cri_shim.services import container_spec as cs
from cri_shim.services.container_create import log_path
from cri_shim.services.failpoints import Action, parse_failpoints
from cri_shim.services.list_cache import ConvertedCache
from cri_shim.services.runtime_state import KeyedLocks
from cri_shim.store.sandbox import Sandbox
from cri_shim.types import SandboxId

IMAGE = cs.ImageInfo(layers=(), entrypoint=("/entry",), cmd=("default", "cmd"), env=("PATH=/img", "A=1"),
                     working_dir="/work", user="", stop_signal="SIGQUIT")


def cfg(**fields: object) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="i"), **fields)


# ---------------------------------------------------------------- process


def test_no_command_runs_entrypoint_and_cmd() -> None:
    assert cs.command_line(cfg(), IMAGE) == ("/entry", "default", "cmd")


def test_args_replace_the_image_cmd_but_keep_the_entrypoint() -> None:
    assert cs.command_line(cfg(args=["x"]), IMAGE) == ("/entry", "x")


def test_command_replaces_entrypoint_and_cmd() -> None:
    assert cs.command_line(cfg(command=["sh"], args=["-c", "true"]), IMAGE) == ("sh", "-c", "true")
    assert cs.command_line(cfg(command=["sh"]), IMAGE) == ("sh",)


def test_no_command_anywhere_is_an_error_naming_the_field() -> None:
    with pytest.raises(InvalidArgument, match="config.command"):
        cs.command_line(cfg(), cs.ImageInfo(layers=()))


def test_env_merges_image_and_config_and_sets_hostname() -> None:
    config = cfg(envs=[pb.KeyValue(key="A", value=b"2"), pb.KeyValue(key="B", value=b"\xff")])
    env = cs.environment(config, IMAGE, "host-1")
    assert env == ("PATH=/img", "A=2", "HOSTNAME=host-1", "B=\udcff")
    assert env[-1].encode("utf-8", "surrogateescape") == b"B=\xff"   # the bytes reach execve unchanged


def test_env_gets_a_default_path() -> None:
    env = cs.environment(cfg(), cs.ImageInfo(layers=()), "h")
    assert env[0].startswith("PATH=/usr/local/sbin:")


@pytest.mark.parametrize("key,value,match", [
    ("A", b"x\0y", r"envs\[0\].value"), ("", b"v", r"envs\[0\].key"), ("A=B", b"v", r"envs\[0\].key"),
    ("HOME", b"/root\n", "HOME"), ("HOME", b"/root\r", "HOME")])
def test_bad_env_is_rejected(key: str, value: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        cs.environment(cfg(envs=[pb.KeyValue(key=key, value=value)]), IMAGE, "h")


def test_newline_in_other_env_values_is_kept() -> None:
    env = cs.environment(cfg(envs=[pb.KeyValue(key="MULTI", value=b"a\nb")]), IMAGE, "h")
    assert "MULTI=a\nb" in env


def test_working_dir_precedence_and_validation() -> None:
    assert cs.working_dir(cfg(working_dir="/x"), IMAGE) == "/x"
    assert cs.working_dir(cfg(), IMAGE) == "/work"
    assert cs.working_dir(cfg(), cs.ImageInfo(layers=())) == "/"
    with pytest.raises(InvalidArgument, match="working_dir"):
        cs.working_dir(cfg(working_dir="relative"), IMAGE)


@pytest.mark.parametrize("text,number", [
    ("SIGTERM", 15), ("TERM", 15), ("9", 9), ("sigquit", 3), ("SIGNAL_SIGINT", 2), ("SIGRTMIN+2", signal.SIGRTMIN + 2),
    ("SIGNAL_SIGRTMAXMINUS1", signal.SIGRTMAX - 1), ("NOPE", 0), ("99", 0), ("", 0)])
def test_parse_signal(text: str, number: int) -> None:
    assert cs.parse_signal(text) == number


def test_stop_signal_precedence() -> None:
    assert cs.stop_signal(cfg(stop_signal=pb.SIGNAL_SIGINT), IMAGE) == signal.SIGINT
    assert cs.stop_signal(cfg(), IMAGE) == signal.SIGQUIT
    assert cs.stop_signal(cfg(), cs.ImageInfo(layers=())) == signal.SIGTERM
    with pytest.raises(InvalidArgument, match="StopSignal"):
        cs.stop_signal(cfg(), cs.ImageInfo(layers=(), stop_signal="SIGBOGUS"))


# ---------------------------------------------------------------- resources


def test_resources_translate_to_oci() -> None:
    r = pb.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 20,
                                   memory_swap_limit_in_bytes=2 << 20, cpuset_cpus="0", cpuset_mems="0",
                                   unified={"memory.high": "1M"})
    assert cs.oci_resources(r) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "memory": {"limit": 1 << 20, "swap": 2 << 20}, "unified": {"memory.high": "1M"}}
    assert cs.oci_resources(pb.LinuxContainerResources()) == {}


def test_negative_resources_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="memory_limit_in_bytes"):
        cs.oci_resources(pb.LinuxContainerResources(memory_limit_in_bytes=-5))
    assert cs.oci_resources(pb.LinuxContainerResources(cpu_quota=-1)) == {"cpu": {"quota": -1}}


def test_oom_score_adj_range() -> None:
    assert cs.oom_score_adj(pb.LinuxContainerResources(oom_score_adj=999)) == 999
    assert cs.oom_score_adj(pb.LinuxContainerResources()) is None
    with pytest.raises(InvalidArgument, match="oom_score_adj"):
        cs.oom_score_adj(pb.LinuxContainerResources(oom_score_adj=1001))


# ---------------------------------------------------------------- mounts

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /shared rw shared:7 - tmpfs tmpfs rw
31 22 0:27 / /slave rw master:7 - tmpfs tmpfs rw
32 22 0:28 / /private rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize("source,propagation,ok", [
    ("/shared/x", pb.PROPAGATION_BIDIRECTIONAL, True), ("/slave/x", pb.PROPAGATION_BIDIRECTIONAL, False),
    ("/slave/x", pb.PROPAGATION_HOST_TO_CONTAINER, True), ("/private", pb.PROPAGATION_HOST_TO_CONTAINER, False),
    ("/private/y", pb.PROPAGATION_PRIVATE, True), ("/other", pb.PROPAGATION_BIDIRECTIONAL, True)])
def test_propagation_needs_a_matching_host_mount(source: str, propagation: int, ok: bool) -> None:
    if ok:
        cs.check_propagation(source, propagation, "m", MOUNTINFO)
    else:
        with pytest.raises(InvalidArgument, match="m.propagation"):
            cs.check_propagation(source, propagation, "m", MOUNTINFO)


def test_mounts_resolve_symlinks_create_missing_dirs_and_set_options(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    missing = tmp_path / "made" / "here"
    config = cfg(mounts=[pb.Mount(container_path="/a", host_path=str(tmp_path / "link"), readonly=True,
                                  selinux_relabel=True),
                         pb.Mount(container_path="/b/", host_path=str(missing), mount_options=["noexec"])])
    a, b = cs.mounts(config, MOUNTINFO)
    assert (a.destination, a.source, a.options) == ("/a", str(real), ("rbind", "rprivate", "ro"))
    assert (b.destination, b.source, b.options) == ("/b", str(missing), ("rbind", "rprivate", "rw", "noexec"))
    assert missing.is_dir()


@pytest.mark.parametrize("mount,error,match", [
    (pb.Mount(container_path="rel", host_path="/tmp"), InvalidArgument, "container_path"),
    (pb.Mount(container_path="/a/../b", host_path="/tmp"), InvalidArgument, "container_path"),
    (pb.Mount(container_path="/a", host_path="tmp"), InvalidArgument, "host_path"),
    (pb.Mount(container_path="/a", host_path="/tmp", recursive_read_only=True), InvalidArgument, "readonly: true"),
    (pb.Mount(container_path="/a", host_path="/shared", readonly=True, recursive_read_only=True,
              propagation=pb.PROPAGATION_BIDIRECTIONAL), InvalidArgument, "private propagation"),
    (pb.Mount(container_path="/a", image=pb.ImageSpec(image="img")), Unimplemented, "not resolved"),
    (pb.Mount(container_path="/a", host_path="/tmp", uidMappings=[pb.IDMapping(length=1)]), InvalidArgument,
     "a pod with a user namespace"),
    (pb.Mount(container_path="/a", host_path="/tmp", mount_options=["suid"]), InvalidArgument, "mount_options")])
def test_bad_mounts_are_rejected(mount: pb.Mount, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cs.mounts(cfg(mounts=[mount]), MOUNTINFO)


def test_image_volume_requests_are_validated() -> None:
    ok = pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="img", image_ref="sha256:ab"))
    assert cs.image_volume_requests(cfg(mounts=[pb.Mount(container_path="/h", host_path="/tmp"), ok])) == \
        {1: "sha256:ab"}
    for bad, match in ((pb.Mount(container_path="/v", image=pb.ImageSpec(image="i")), "readonly"),
                       (pb.Mount(container_path="/v", readonly=True, host_path="/x", image=pb.ImageSpec(image="i")),
                        "either host_path or image"),
                       (pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="i"),
                                 image_sub_path="/abs"), "image_sub_path")):
        with pytest.raises(InvalidArgument, match=match):
            cs.image_volume_requests(cfg(mounts=[bad]))


def test_image_volume_mounts_bind_one_layer_and_overlay_several(tmp_path: Path) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    (low / "etc").mkdir(parents=True)
    (high / "bin").mkdir(parents=True)
    one = cs.ImageVolume("sha256:1", (str(low),))
    two = cs.ImageVolume("sha256:2", (str(low), str(high)))
    m = pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="i"))
    [bind] = cs.mounts(cfg(mounts=[m]), MOUNTINFO, {0: one})
    assert (bind.destination, bind.source, bind.type, bind.options) == ("/v", str(low), "bind",
                                                                        ("rbind", "rprivate", "ro", "nodev"))
    [over] = cs.mounts(cfg(mounts=[m]), MOUNTINFO, {0: two})
    assert over.type == "overlay" and over.options == ("ro", "nodev", f"lowerdir={high}:{low}")
    sub = pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="i"), image_sub_path="etc")
    assert cs.mounts(cfg(mounts=[sub]), MOUNTINFO, {0: two})[0].source == str(low / "etc")   # only one layer has it
    missing = pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="i"), image_sub_path="nope")
    with pytest.raises(InvalidArgument, match="nope"):
        cs.mounts(cfg(mounts=[missing]), MOUNTINFO, {0: two})


def test_duplicate_mount_destinations_are_rejected() -> None:
    m = pb.Mount(container_path="/a", host_path="/tmp")
    with pytest.raises(InvalidArgument, match="twice"):
        cs.mounts(cfg(mounts=[m, m]), MOUNTINFO)


def test_devices_are_host_device_nodes_with_a_cgroup_rule() -> None:
    devices, rules = cs.devices(cfg(devices=[pb.Device(host_path="/dev/null", container_path="/dev/mynull",
                                                       permissions="rw")]))
    assert (devices[0].path, devices[0].type, devices[0].major, devices[0].minor) == ("/dev/mynull", "c", 1, 3)
    assert rules == [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]
    with pytest.raises(InvalidArgument, match="permissions"):
        cs.devices(cfg(devices=[pb.Device(host_path="/dev/null", permissions="rwx")]))
    with pytest.raises(InvalidArgument, match="not a character or block device"):
        cs.devices(cfg(devices=[pb.Device(host_path="/dev/shm")]))


# ---------------------------------------------------------------- namespaces and paths


def pod(pid: int = pb.CONTAINER) -> cs.PodInfo:
    config = pb.PodSandboxConfig()
    config.linux.security_context.namespace_options.pid = pid  # type: ignore[assignment]
    namespaces = {"net": "/n/net", "ipc": "/n/ipc", "uts": "/n/uts"}
    if pid == pb.POD:
        namespaces["pid"] = "/n/pid"
    return cs.PodInfo(id="p", hostname="h", cgroup_parent="/cg", namespaces=namespaces, config=config)


def test_namespaces_join_the_pod_and_choose_pid() -> None:
    config = cfg()
    config.linux.security_context.namespace_options.pid = pb.CONTAINER
    kinds = {n.type: n.path for n in cs.namespaces(config, pod(), None)}
    assert kinds == {"mount": "", "cgroup": "", "network": "/n/net", "ipc": "/n/ipc", "uts": "/n/uts", "pid": ""}
    config.linux.security_context.namespace_options.pid = pb.POD
    assert {n.type: n.path for n in cs.namespaces(config, pod(pb.POD), None)}["pid"] == "/n/pid"
    with pytest.raises(InvalidArgument, match="namespace_options.pid"):
        cs.namespaces(config, pod(), None)
    config.linux.security_context.namespace_options.pid = pb.TARGET
    assert {n.type: n.path for n in cs.namespaces(config, pod(), "/proc/9/ns/pid")}["pid"] == "/proc/9/ns/pid"
    with pytest.raises(InvalidArgument, match="target_id"):
        cs.namespaces(config, pod(), None)
    assert "pid" not in {n.type for n in cs.namespaces(cfg(), pod(pb.NODE), None)}


def sandbox(log_directory: str) -> Sandbox:
    return Sandbox(id=SandboxId("s"), name="n", config=pb.PodSandboxConfig(log_directory=log_directory),
                   handler="", created_at=1)


def test_log_path_joins_and_stays_inside_the_log_directory() -> None:
    assert log_path(sandbox("/var/log/pods/x"), cfg(log_path="c/0.log")) == "/var/log/pods/x/c/0.log"
    assert log_path(sandbox(""), cfg(log_path="c.log")) == ""
    assert log_path(sandbox("/l"), cfg()) == ""
    for bad in ("../x.log", "/abs.log", "a/../../x"):
        with pytest.raises(InvalidArgument, match="log_path"):
            log_path(sandbox("/l"), cfg(log_path=bad))


# ---------------------------------------------------------------- helpers


def test_failpoints_parse() -> None:
    assert parse_failpoints("a=error, b=kill,c=delay:1.5") == {"a": Action("error"), "b": Action("kill"),
                                                                "c": Action("delay", 1.5)}
    assert parse_failpoints("") == {}
    for bad in ("a", "a=explode", "a=delay:x", "=error", "a=delay:-1"):
        with pytest.raises(ValueError):
            parse_failpoints(bad)


def test_keyed_locks_serialize_one_key_and_forget_it() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    async def main() -> None:
        await asyncio.gather(work("k", "a"), work("k", "b"), work("other", "c"))

    asyncio.run(main())
    assert order.index("a-") < order.index("b+")
    assert locks._locks == {}


def test_converted_cache_rebuilds_only_changed_records() -> None:
    calls: list[str] = []

    def convert(sb: Sandbox) -> str:
        calls.append(sb.id)
        return f"msg-{sb.id}-{sb.created_at}"

    cache: ConvertedCache[Sandbox, str] = ConvertedCache(convert)
    first = sandbox("")
    assert cache.get(first) == "msg-s-1" and cache.get(first) == "msg-s-1"
    changed = first.with_(created_at=2)
    assert cache.get(changed) == "msg-s-2" and calls == ["s", "s"]
    cache.prune(set())
    assert cache.get(changed) == "msg-s-2" and calls == ["s", "s", "s"]
