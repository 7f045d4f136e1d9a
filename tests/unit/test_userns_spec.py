"""User namespace options: what RunPodSandbox accepts, what CreateContainer derives, and how the runtime reads
the OCI id mappings (pure logic; the kernel side is in tests/integration/test_userns.py)."""

from __future__ import annotations

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument
from cri_shim.services import container_spec as cs
from cri_shim.services import sandbox_run
from runtime.linux.spec import SpecError, container_plan


def mapping(container_id: int = 0, host_id: int = 100000, length: int = 65536) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


def pod(mode: int | None = pb.POD, uids: list[pb.IDMapping] | None = None,
        gids: list[pb.IDMapping] | None = None) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="n", uid="u"))
    if mode is not None:
        u = cfg.linux.security_context.namespace_options.userns_options
        u.mode = mode
        u.uids.extend([mapping()] if uids is None else uids)
        u.gids.extend([mapping()] if gids is None else gids)
    return cfg


def test_unset_and_node_mean_the_host_user_namespace() -> None:
    for cfg in (pod(None), pod(pb.NODE, [], [])):
        sandbox_run.validate(cfg)
        assert sandbox_run.userns_mappings(cfg) == ((), ())


def test_pod_mode_with_one_mapping_of_root_is_accepted() -> None:
    cfg = pod()
    sandbox_run.validate(cfg)
    uids, gids = sandbox_run.userns_mappings(cfg)
    assert [(m.container_id, m.host_id, m.size) for m in uids + gids] == [(0, 100000, 65536)] * 2


@pytest.mark.parametrize(("cfg", "words"), [
    (pod(uids=[mapping(), mapping(host_id=300000)]), "uids: exactly one mapping"),
    (pod(gids=[]), "gids: exactly one mapping"),
    (pod(uids=[mapping(container_id=1)]), "container id 0 must be mapped"),
    (pod(gids=[mapping(host_id=0)]), "excludes host id 0"),
    (pod(uids=[mapping(host_id=(1 << 32) - 10, length=100)]), "ends below 2^32"),
    (pod(pb.CONTAINER), "CONTAINER is not supported"),
    (pod(pb.TARGET), "TARGET is not supported"),
    (pod(pb.NODE), "only valid with mode POD"),
])
def test_invalid_userns_options_name_the_field(cfg: pb.PodSandboxConfig, words: str) -> None:
    with pytest.raises(InvalidArgument, match="userns_options") as e:
        sandbox_run.validate(cfg)
    assert words in str(e.value)


@pytest.mark.parametrize("field", ["network", "pid", "ipc"])
def test_userns_pod_cannot_share_host_namespaces(field: str) -> None:
    cfg = pod()
    setattr(cfg.linux.security_context.namespace_options, field, pb.NODE)
    with pytest.raises(InvalidArgument, match="host's network, PID or IPC"):
        sandbox_run.validate(cfg)


def test_sandbox_spec_carries_the_pods_mappings_to_the_runtime() -> None:
    from cri_shim.store.sandbox import Sandbox
    sb = Sandbox(id="s", name="n", config=pod(), handler="", created_at=0, sandbox_dir="/d", netns_path="/n",
                 cgroup_parent="/c")
    lx = sandbox_run.sandbox_spec(sb, "h").linux
    assert lx is not None and lx.uid_mappings == lx.gid_mappings and len(lx.uid_mappings) == 1
    assert (lx.uid_mappings[0].container_id, lx.uid_mappings[0].host_id, lx.uid_mappings[0].size) == (0, 100000, 65536)
    plain = sandbox_run.sandbox_spec(sb.with_(config=pod(None)), "h").linux
    assert plain is not None and plain.uid_mappings == ()


def pod_info(cfg: pb.PodSandboxConfig, user: bool = True) -> cs.PodInfo:
    ns = {"net": "/n", "ipc": "/i", "uts": "/u", **({"user": "/pods/x/ns/user"} if user else {})}
    return cs.PodInfo(id="p", hostname="h", cgroup_parent="/c", namespaces=ns, config=cfg)


def test_container_in_userns_pod_joins_the_pods_user_namespace_with_its_mappings() -> None:
    c = pb.ContainerConfig()
    c.linux.security_context.namespace_options.pid = pb.CONTAINER
    info = pod_info(pod())
    assert cs.id_mappings(c, info) == ([{"containerID": 0, "hostID": 100000, "size": 65536}],) * 2
    assert ("user", "/pods/x/ns/user") in [(n.type, n.path) for n in cs.namespaces(c, info, None)]


def test_container_userns_options_must_match_the_pod() -> None:
    c = pb.ContainerConfig()
    c.linux.security_context.namespace_options.userns_options.CopyFrom(
        pod(uids=[mapping(host_id=5)]).linux.security_context.namespace_options.userns_options)
    with pytest.raises(InvalidArgument, match="repeat the pod's"):
        cs.id_mappings(c, pod_info(pod()))
    with pytest.raises(InvalidArgument, match="repeat the pod's"):
        cs.id_mappings(c, pod_info(pod(None), user=False))
    c.linux.security_context.namespace_options.userns_options.mode = pb.NODE
    with pytest.raises(InvalidArgument, match="cannot leave"):
        cs.id_mappings(c, pod_info(pod()))
    assert cs.id_mappings(c, pod_info(pod(None), user=False)) == ([], [])


def test_privileged_container_is_refused_in_a_userns_pod() -> None:
    c = pb.ContainerConfig()
    c.linux.security_context.privileged = True
    with pytest.raises(InvalidArgument, match="privileged"):
        cs.id_mappings(c, pod_info(pod()))


def test_idmapped_mount_becomes_a_non_recursive_bind_with_the_idmap_option() -> None:
    m = pb.Mount(container_path="/v", host_path="/tmp", uidMappings=[mapping()], gidMappings=[mapping()])
    maps = cs.id_mappings(pb.ContainerConfig(), pod_info(pod()))
    (out,) = cs.mounts(pb.ContainerConfig(mounts=[m]), pod_mappings=maps)
    assert out.options[0] == "bind" and "idmap" in out.options
    other = pb.Mount(container_path="/v", host_path="/tmp", uidMappings=[mapping(host_id=7)], gidMappings=[mapping()])
    with pytest.raises(InvalidArgument, match="pod's own user namespace"):
        cs.mounts(pb.ContainerConfig(mounts=[other]), pod_mappings=maps)


def oci(namespaces: list[dict[str, str]], **linux: object) -> dict[str, object]:
    return {"process": {"args": ["/bin/true"]}, "root": {"path": "/r"},
            "linux": {"namespaces": [{"type": "mount"}, *namespaces], **linux}}


def test_runtime_reads_the_host_ids_of_the_containers_root() -> None:
    spec = oci([{"type": "user", "path": "/proc/self/ns/user"}],
               uidMappings=[{"containerID": 0, "hostID": 1000, "size": 10}],
               gidMappings=[{"containerID": 0, "hostID": 2000, "size": 10}])
    assert container_plan(spec, "/b").host_root() == (1000, 2000)
    assert container_plan(oci([]), "/b").host_root() is None


@pytest.mark.parametrize(("namespaces", "linux", "field"), [
    ([{"type": "user"}], {}, "linux.namespaces"),
    ([{"type": "user", "path": "/proc/self/ns/user"}], {}, "linux.uidMappings"),
    ([{"type": "user", "path": "/proc/self/ns/user"}],
     {"uidMappings": [{"containerID": 1, "hostID": 1000, "size": 10}],
      "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}]}, "linux.uidMappings"),
    ([], {"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}]}, "linux.uidMappings"),
    ([{"type": "user", "path": "/proc/self/ns/user"}],
     {"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 0}],
      "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}]}, "linux.uidMappings[0]"),
])
def test_runtime_rejects_unusable_user_namespace_specs(namespaces: list[dict[str, str]], linux: dict[str, object],
                                                       field: str) -> None:
    with pytest.raises(SpecError) as e:
        container_plan(oci(namespaces, **linux), "/b")
    assert e.value.field == field
