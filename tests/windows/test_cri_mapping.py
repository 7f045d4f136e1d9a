"""CRI Windows configs -> OCI spec -> HCS documents: golden rows, property tests, and CRI flows per handler.

The property tests generate CRI WindowsContainerConfigs (resources, mounts,
env, devices, users) and require that whatever the mapping accepts becomes an
OCI `windows` object valid against the OCI schema and an HCS ComputeSystem
valid closed-world against the 21H2 and 1809 schemas, with CPU Count, Maximum
and Weight exclusive and in range; and that whatever it refuses is refused
with InvalidArgument/Unimplemented naming a field, never another exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cri_shim import windows_mapping as M
from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument, Unimplemented
from runtime import base, oci
from runtime.windows import ocimap
from runtime.windows import schema as S
from runtime.windows.testing.fake_hcs import Program
from runtime.windows.testing.schemas import ClosedWorld, OciWindowsSchema
from tests.windows.conftest import NAMESPACE, World, run

POD_ID = "p" * 64
IMAGE = M.WindowsImage(entrypoint=("cmd", "/S", "/C"), cmd=("ping -t localhost",),
                       env=("PATH=C:\\Windows\\system32;C:\\Windows",), user="ContainerUser")


def pod(host_process: bool = False, handler: str = M.HANDLER_PROCESS, searches: tuple[str, ...] = ()) -> M.WindowsPod:
    config = pb.PodSandboxConfig(hostname="web-0")
    config.windows.security_context.host_process = host_process
    config.dns_config.searches.extend(searches)
    spec = M.sandbox_windows(config, handler, None if host_process else NAMESPACE)
    return M.WindowsPod(POD_ID, "web-0", config, spec)


def container(**resources: int) -> pb.ContainerConfig:
    c = pb.ContainerConfig()
    c.metadata.name = "app"
    for k, v in resources.items():
        setattr(c.windows.resources, k, v)
    return c


LAYERS = ("C:\\ProgramData\\cri-shim\\snapshots\\3", "C:\\ProgramData\\cri-shim\\snapshots\\12",
          "C:\\ProgramData\\cri-shim\\snapshots\\42")


def test_kubelet_cpu_maximum_arithmetic() -> None:
    assert M.kubelet_cpu_maximum(500, 4) == 1250
    assert M.kubelet_cpu_maximum(1, 64) == 1            # clamped up
    assert M.kubelet_cpu_maximum(128_000, 4) == 10_000  # clamped down


@pytest.mark.parametrize("given_res, expected", [
    ({"cpu_maximum": 1250}, {"cpu": {"maximum": 1250}}),
    ({"cpu_count": 2}, {"cpu": {"count": 2}}),
    ({"cpu_count": 2, "cpu_maximum": 1250}, {"cpu": {"count": 2}}),       # kubelet: count wins
    ({"cpu_shares": 2}, {"cpu": {"shares": 2}}),
    ({"cpu_maximum": 20_000}, {"cpu": {"maximum": 10_000}}),              # clamped like kubelet
    ({"memory_limit_in_bytes": 512 << 20}, {"memory": {"limit": 512 << 20}}),
    ({"rootfs_size_in_bytes": 20 << 30}, {"storage": {"sandboxSize": 20 << 30}}),
    ({}, {}),
])
def test_resource_rows(given_res: dict[str, int], expected: dict[str, Any]) -> None:
    assert M.resources(container(**given_res).windows.resources) == expected


@pytest.mark.parametrize("given_res, field", [
    ({"cpu_shares": 2, "cpu_maximum": 100}, "cpu_shares cannot be combined"),
    ({"cpu_shares": 20_000}, "cpu_shares"),
    ({"memory_limit_in_bytes": 1000}, "memory_limit_in_bytes"),
    ({"cpu_count": -1}, "cpu_count"),
])
def test_bad_resources_are_invalid_arguments(given_res: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        M.resources(container(**given_res).windows.resources)


def test_affinity_and_gmsa_are_unimplemented() -> None:
    c = container()
    c.windows.resources.affinity_cpus.add(cpu_mask=3, cpu_group=0)
    with pytest.raises(Unimplemented, match="affinity_cpus"):
        M.resources(c.windows.resources)
    p = pb.PodSandboxConfig()
    p.windows.security_context.credential_spec = "{}"
    with pytest.raises(Unimplemented, match="credential_spec"):
        M.sandbox_windows(p, M.HANDLER_PROCESS, NAMESPACE)


def test_host_process_mismatch_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="host_process"):
        M.container_spec(container(), pod(host_process=True), IMAGE, LAYERS)
    c = container()
    c.windows.security_context.host_process = True
    with pytest.raises(InvalidArgument, match="host_process"):
        M.container_spec(c, pod(), IMAGE, LAYERS)
    p = pb.PodSandboxConfig()
    p.windows.security_context.host_process = True
    with pytest.raises(InvalidArgument, match="HostProcess pods cannot use"):
        M.sandbox_windows(p, M.HANDLER_HYPERV, None)
    assert M.sandbox_windows(p, M.HANDLER_PROCESS, NAMESPACE).network_namespace is None


def test_golden_spec_of_a_process_isolated_container(oci_windows: OciWindowsSchema) -> None:
    c = container(cpu_maximum=1250, memory_limit_in_bytes=512 << 20)
    c.mounts.add(host_path="C:\\data", container_path="\\data", readonly=True)
    c.mounts.add(host_path="\\\\.\\pipe\\docker_engine", container_path="\\\\.\\pipe\\docker_engine")
    c.devices.add(host_path="class/5B45201D-F2F2-4F3B-85BB-30FF1F953599")
    c.envs.add(key="Path", value=b"C:\\bin")
    spec = M.container_spec(c, pod(searches=("svc.cluster.local",)), IMAGE, LAYERS)
    assert spec["process"] == {"cwd": "C:\\", "env": ["Path=C:\\bin"], "terminal": False,
                               "user": {"username": "ContainerUser"},
                               "args": ["cmd", "/S", "/C", "ping -t localhost"]}
    assert spec["windows"] == {
        "layerFolders": [LAYERS[1], LAYERS[0], LAYERS[2]],
        "resources": {"cpu": {"maximum": 1250}, "memory": {"limit": 512 << 20}},
        "network": {"networkNamespace": NAMESPACE, "DNSSearchList": ["svc.cluster.local"]},
        "devices": [{"id": "5B45201D-F2F2-4F3B-85BB-30FF1F953599", "idType": "class"}],
    }
    assert spec["mounts"] == [{"source": "C:\\data", "destination": "C:\\data", "options": ["ro"]},
                              {"source": "\\\\.\\pipe\\docker_engine", "destination": "\\\\.\\pipe\\docker_engine"}]
    assert oci_windows.errors(spec["windows"]) == []


def test_args_escaped_images_pass_their_command_line_verbatim() -> None:
    image = M.WindowsImage(entrypoint=('cmd /S /C "echo hi"',), args_escaped=True)
    spec = M.container_spec(container(), pod(), image, LAYERS)
    assert spec["process"]["commandLine"] == 'cmd /S /C "echo hi"'
    c = container()
    c.command.extend(["powershell", "-c", "Get-Date"])
    spec = M.container_spec(c, pod(), image, LAYERS)
    assert spec["process"]["args"] == ["powershell", "-c", "Get-Date"] and "commandLine" not in spec["process"]


@pytest.mark.parametrize("mount, message", [
    ({"host_path": "C:\\d", "container_path": "C:"}, "drive root"),
    ({"host_path": "C:\\d", "container_path": "C:\\"}, "drive root"),
    ({"host_path": "relative", "container_path": "C:\\d"}, "absolute Windows path"),
    ({"host_path": "\\\\.\\pipe\\p", "container_path": "C:\\p"}, "named pipe"),
    ({"host_path": "C:\\d", "container_path": "C:\\d", "propagation": pb.PROPAGATION_BIDIRECTIONAL}, "propagation"),
])
def test_bad_mounts_are_invalid_arguments(mount: dict[str, Any], message: str) -> None:
    c = container()
    c.mounts.add(**mount)
    with pytest.raises(InvalidArgument, match=message):
        M.container_spec(c, pod(), IMAGE, LAYERS)


def test_stats_conversion_uses_nanoseconds_and_nanocores() -> None:
    first = base.ContainerStats(timestamp_ns=1_000_000_000, cpu_usage_ns=100_000_000,
                                memory_working_set_bytes=30 << 20, memory_usage_bytes=50 << 20,
                                writable_layer_mountpoint="C:\\snap\\9", writable_layer_bytes=4096)
    second = base.ContainerStats(timestamp_ns=2_000_000_000, cpu_usage_ns=600_000_000)
    out = M.container_stats(second, pb.ContainerAttributes(id="c"), first)
    assert out.cpu.usage_core_nano_seconds.value == 600_000_000
    assert out.cpu.usage_nano_cores.value == 500_000_000          # half a core over one second
    one = M.container_stats(first, pb.ContainerAttributes(id="c"))
    assert one.memory.working_set_bytes.value == 30 << 20 and one.memory.commit_memory_bytes.value == 50 << 20
    assert one.writable_layer.used_bytes.value == 4096 and not one.cpu.HasField("usage_nano_cores")


# ---------------------------------------------------------------- property tests

envs = st.lists(st.tuples(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_abc", min_size=1, max_size=8),
                          st.binary(max_size=16)), max_size=4)
paths = st.text("abcXYZ019 _-.", min_size=1, max_size=12).filter(lambda s: s.strip(" .") == s and s not in (".", ".."))
mounts = st.lists(st.tuples(paths, paths, st.booleans(), st.booleans()), max_size=3)


@st.composite
def cri_configs(draw: st.DrawFn) -> tuple[pb.ContainerConfig, M.WindowsPod]:
    c = pb.ContainerConfig()
    r = c.windows.resources
    r.cpu_count = draw(st.sampled_from([0, 0, 1, 2, 64, 1000]))
    r.cpu_maximum = draw(st.sampled_from([0, 0, 1, 1250, 10_000, 20_000, -5]))
    r.cpu_shares = draw(st.sampled_from([0, 0, 0, 2, 5000, 10_000, 70_000]))
    r.memory_limit_in_bytes = draw(st.sampled_from([0, 1, 1 << 20, (512 << 20) + 7, 1 << 40]))
    r.rootfs_size_in_bytes = draw(st.sampled_from([0, 20 << 30]))
    for key, value in draw(envs):
        c.envs.add(key=key, value=value)
    for i, (host, dest, readonly, pipe) in enumerate(draw(mounts)):
        if pipe:
            c.mounts.add(host_path=f"\\\\.\\pipe\\{host}{i}", container_path=f"\\\\.\\pipe\\{dest}{i}")
        else:
            c.mounts.add(host_path=f"C:\\host\\{host}", container_path=f"\\mnt{i}\\{dest}", readonly=readonly)
    if draw(st.booleans()):
        c.devices.add(host_path="class/5B45201D-F2F2-4F3B-85BB-30FF1F953599")
    c.windows.security_context.run_as_username = draw(st.sampled_from(["", "ContainerAdministrator"]))
    c.tty = draw(st.booleans())
    if draw(st.booleans()):
        c.command.extend(draw(st.lists(st.text(min_size=1, max_size=6).filter(lambda s: "\0" not in s),
                                       min_size=1, max_size=3)))
    handler = draw(st.sampled_from([M.HANDLER_PROCESS, M.HANDLER_HYPERV]))
    return c, pod(handler=handler)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_configs())
def test_accepted_cri_configs_always_produce_valid_oci_and_hcs_documents(
        generated: tuple[pb.ContainerConfig, M.WindowsPod]) -> None:
    c, p = generated
    hcs_21h2 = _schemas["21H2"]
    try:
        spec = M.container_spec(c, p, IMAGE, LAYERS)
    except (InvalidArgument, Unimplemented) as e:
        assert str(e)
        return
    assert _schemas["oci"].errors(spec["windows"]) == []
    parents = tuple(S.Layer(f"8c7f3a1e-2b4d-5e6f-9a0b-1c2d3e4f5a{i:02x}", path) for i, path in
                    enumerate(reversed(LAYERS[:-1])))
    if p.spec.hyperv:
        doc = ocimap.hosted_document(spec, parents, "C:\\c\\1", ocimap.HostInfo(4), f"{POD_ID}@vm",
                                     ocimap.UtilityVmConfig(), owner="cri-shim")
        container_json = S.to_json(doc)["HostedSystem"]["Container"]
        assert hcs_21h2.errors("HostedSystem", S.to_json(doc)["HostedSystem"]) == []
    else:
        doc = ocimap.container_document(spec, ocimap.MountedLayers(
            parents, "\\\\?\\Volume{5b3c2a1d-0000-0000-0000-100000000000}\\"), ocimap.HostInfo(4), owner="cri-shim")
        container_json = S.to_json(doc)["Container"]
    document = S.to_json(doc)
    assert hcs_21h2.errors("ComputeSystem", document) == []
    if not container_json.get("AssignedDevices"):
        # WS2019's schema knows only class-GUID devices without a Type; device assignment needs WS2022.
        legacy = json.loads(json.dumps(document).replace('"Container_', '"'))
        assert _schemas["1809"].errors("ComputeSystem", legacy) == []
    cpu = container_json.get("Processor", {})
    assert len(cpu) <= 1
    assert 0 < cpu.get("Maximum", 1) <= 10_000 and 0 < cpu.get("Weight", 1) <= 10_000
    assert 0 < cpu.get("Count", 1) <= (2 if p.spec.hyperv else 4)
    params = S.to_json(ocimap.process_parameters(spec["process"], stdin=False))
    assert hcs_21h2.errors("ProcessParameters", params) == []


SCHEMAS = Path(__file__).parent / "schemas"
_schemas: dict[str, Any] = {
    "21H2": ClosedWorld(SCHEMAS / "hcs" / "hcs-schema-21H2.json"),
    "1809": ClosedWorld(SCHEMAS / "hcs" / "hcs-schema-1809.json"),
    "oci": OciWindowsSchema(SCHEMAS / "oci"),
}


# ---------------------------------------------------------------- CRI flows per handler


@pytest.mark.parametrize("handler, host_process", [
    (M.HANDLER_PROCESS, False), (M.HANDLER_HYPERV, False), (M.HANDLER_PROCESS, True)],
    ids=["process-isolation", "hyper-v", "hostprocess"])
def test_cri_flow_from_cri_messages_to_the_fake_hcs(world: World, handler: str, host_process: bool,
                                                    oci_windows: OciWindowsSchema) -> None:
    world.fake.program("ping", Program(stdout=b"pong\r\n", until_signalled=True))
    world.jobs.program("ping", Program(stdout=b"pong\r\n", until_signalled=True))
    world.hcn.namespaces[NAMESPACE] = []
    p = pod(host_process=host_process, handler=handler)
    c = container(cpu_maximum=M.kubelet_cpu_maximum(500, 4), memory_limit_in_bytes=256 << 20)
    c.windows.security_context.host_process = host_process
    base_layer = world.base_layer()
    scratch = str(world.root / "snap" / "c1")
    spec_doc = M.container_spec(c, p, IMAGE, (base_layer, scratch))
    assert oci_windows.errors(spec_doc["windows"]) == []
    bundle = world.root / "bundles" / "c1"
    oci.write(bundle, spec_doc)
    cid = "c" * 64
    sandbox = base.SandboxSpec(id=POD_ID, name="default/web", hostname="web-0", sandbox_dir=str(world.root / "pod"),
                               log_directory=str(world.root / "logs"), windows=p.spec)
    cspec = base.ContainerSpec(id=cid, sandbox_id=POD_ID, bundle_dir=str(bundle),
                               rootfs=base.RootfsSpec((base_layer,), scratch),
                               stdio=base.StdioSpec(log_path=str(world.root / "logs" / "c1.log")))

    async def flow() -> None:
        b = world.backend(hyperv=handler == M.HANDLER_HYPERV, name=handler)
        await b.create_sandbox(sandbox)
        await b.create_container(cspec)
        assert (await b.start_container(cid)).state is base.ContainerState.RUNNING
        result = await b.exec_sync(cid, base.ExecSpec(("cmd", "/c", "echo", "hi")), 5, 1024)
        assert result.exit_code == 0
        stopped = await b.stop_container(cid, 2)
        assert stopped.state is base.ContainerState.EXITED
        await b.delete_container(cid)
        await b.stop_sandbox(POD_ID, 2)
        await b.remove_sandbox(POD_ID)

    run(flow())
    assert (world.root / "logs" / "c1.log").read_text().endswith("stdout F pong\n")
    if host_process:
        assert world.fake.calls == [] and world.jobs.calls[0] == ("create", f"JobContainer_{cid}")
    else:
        systems = [d for n, d in world.fake.calls if n == "HcsCreateComputeSystem"]
        assert systems == ([f"{POD_ID}@vm", cid] if handler == M.HANDLER_HYPERV else [cid])
        assert world.fake.violations == []
    assert world.problems() == []


def test_pod_stats_sum_up_for_windows_pod_sandbox_stats() -> None:
    c1 = base.ContainerStats(timestamp_ns=2_000_000_000, cpu_usage_ns=300, memory_working_set_bytes=10)
    before = base.SandboxStats(timestamp_ns=1_000_000_000, cpu_usage_ns=0, containers={})
    now = base.SandboxStats(timestamp_ns=2_000_000_000, cpu_usage_ns=1_000_000_000, memory_working_set_bytes=10,
                            pids=3, containers={"c1": c1, "gone": c1})
    out = M.sandbox_stats(now, {"c1": pb.ContainerAttributes(id="c1")}, before)
    assert out.cpu.usage_nano_cores.value == 1_000_000_000        # one core busy for the second
    assert out.process.process_count.value == 3
    assert [c.attributes.id for c in out.containers] == ["c1"]
