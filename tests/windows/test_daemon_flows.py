"""Full CRI flows for Windows pods through a real daemon, crictl and gRPC, on the fake HCS (see daemon_env.py).

These prove the daemon's side on Linux: the services route Windows handlers
through windows_mapping to WindowsBackend, create and delete the pod's HCN
namespace, run CNI with the namespace GUID, write a schema-valid OCI spec, and
that the HCS calls and documents that result are the documented ones (the
fake validates each document closed-world against the 21H2 schema; the tests
validate them again). They cannot prove that Windows behaves like the fake
(README: not verified on Windows yet).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from runtime.windows.testing.schemas import ClosedWorld, OciWindowsSchema
from tests.harness.registry import LocalRegistry, start_registry
from tests.windows.daemon_env import (HANDLER_HYPERV, HANDLER_PROCESS, POD_IP, WinDaemon, container_config, lines,
                                      pod_config, pull, push_image, windows_daemon)


@pytest.fixture(scope="module")
def registry() -> Iterator[tuple[LocalRegistry, str]]:
    reg = start_registry()
    try:
        yield reg, push_image(reg)
    finally:
        reg.stop()


def _start(registry: tuple[LocalRegistry, str], lifecycle: dict[str, Any] | None = None) -> WinDaemon:
    d = windows_daemon(*registry, lifecycle=lifecycle)
    d.daemon.start()
    pull(d)
    return d


def _finish(d: WinDaemon) -> None:
    d.daemon.stop()
    assert "Traceback" not in d.daemon.log_text(), d.daemon.log_tail(200)
    shutil.rmtree(d.daemon.workdir, ignore_errors=True)


@pytest.fixture
def wd(registry: tuple[LocalRegistry, str]) -> Iterator[WinDaemon]:
    d = _start(registry)
    yield d
    _finish(d)


def hcs_calls(report: dict[str, Any]) -> list[str]:
    return [f"{name} {detail}".strip() for name, detail in report["calls"] if name != "HcsCancelOperation"]


def assert_documents_valid(report: dict[str, Any], hcs_21h2: ClosedWorld) -> None:
    assert report["documents"], "the fake HCS saw no documents"
    for definition, doc in report["documents"]:
        assert hcs_21h2.errors(definition, doc) == [], (definition, doc)
    assert report["problems"] == []


def test_process_isolated_pod_runs_through_crictl_with_the_documented_hcs_calls(
        wd: WinDaemon, hcs_21h2: ClosedWorld, oci_windows: OciWindowsSchema) -> None:
    logs = wd.daemon.workdir / "logs"
    pod_json = wd.write("pod.json", pod_config("web", log_dir=logs))
    web = container_config("web", wd.image)
    web["mounts"] = [{"host_path": "C:\\data", "container_path": "C:\\data", "readonly": True},
                     {"host_path": "\\\\.\\pipe\\docker_engine", "container_path": "\\\\.\\pipe\\docker_engine"}]
    ctr_json = wd.write("ctr.json", web)
    pod = wd.crictl("runp", "--runtime", HANDLER_PROCESS, pod_json)
    cid = wd.crictl("create", pod, ctr_json, pod_json)
    wd.crictl("start", cid)
    assert wd.crictl("exec", "-s", cid, "cmd", "/c", "echo", "hello-windows") == "hello-windows"
    assert wd.crictl("exec", cid, "cmd", "/c", "echo", "streamed") == "streamed"   # through the streaming server
    status = json.loads(wd.crictl("inspectp", pod))["status"]
    assert (status["state"], status["network"]["ip"], status["linux"]) == ("SANDBOX_READY", POD_IP, None)
    spec = json.loads(wd.crictl("inspect", cid))["info"]["runtimeSpec"]
    assert oci_windows.errors(spec["windows"]) == []
    namespace = spec["windows"]["network"]["networkNamespace"]
    scratch = str(wd.daemon.root / "containers" / cid / "scratch")
    assert spec["windows"]["layerFolders"][-1] == scratch and len(spec["windows"]["layerFolders"]) == 3
    assert spec["process"]["args"] == ["ping", "-t", "localhost"] and spec["process"]["cwd"] == "C:\\app"
    assert spec["mounts"] == [{"source": "C:\\data", "destination": "C:\\data", "options": ["ro"]},
                              {"source": "\\\\.\\pipe\\docker_engine", "destination": "\\\\.\\pipe\\docker_engine"}]
    wd.crictl("stop", "--timeout", "10", cid)
    assert list(lines(logs / "web.log")) == ["stdout F Pinging localhost"]
    wd.crictl("rm", cid)
    wd.crictl("stopp", pod)
    wd.crictl("rmp", pod)
    assert wd.crictl("pods", "-q") == ""

    # CNI ran with the pod's HCN namespace GUID as its netns, for ADD and for DEL.
    assert wd.cni_calls() == [["ADD", pod, namespace], ["DEL", pod, namespace]]
    report = wd.report()
    assert report["hcn_calls"] == [["create_namespace", namespace], ["delete_namespace", namespace]]
    assert report["layer_calls"] == [["mount", scratch], ["unmount", scratch]]
    assert hcs_calls(report) == [
        f"HcsCreateComputeSystem {cid}",
        "HcsGetComputeSystemProperties {}",
        f"HcsStartComputeSystem {cid}",
        f"HcsCreateProcess {cid} ping -t localhost",
        f"HcsCreateProcess {cid} cmd /c echo hello-windows",
        "HcsCloseProcess 4004",
        f"HcsCreateProcess {cid} cmd /c echo streamed",
        "HcsCloseProcess 4008",
        "HcsSignalProcess 4000 CtrlShutdown",
        f"HcsShutDownComputeSystem {cid}",
        "HcsCloseProcess 4000",
        f"HcsTerminateComputeSystem {cid}",
        f"HcsCloseComputeSystem {cid}",
    ]
    created = [doc for definition, doc in report["documents"] if definition == "ComputeSystem"]
    assert [d["Container"]["Networking"]["Namespace"] for d in created] == [namespace]
    container = created[0]["Container"]
    assert container["MappedDirectories"] == [{"HostPath": "C:\\data", "ContainerPath": "C:\\data", "ReadOnly": True}]
    assert container["MappedPipes"] == [{"ContainerPipeName": "docker_engine", "HostPath": "\\\\.\\pipe\\docker_engine"}]
    assert container["GuestOs"] == {"HostName": "web"}
    assert_documents_valid(report, hcs_21h2)



def test_host_process_pod_runs_on_job_objects_without_hcs_or_hcn(wd: WinDaemon) -> None:
    logs = wd.daemon.workdir / "logs"
    pod_json = wd.write("pod.json", pod_config("hpc", host_process=True, log_dir=logs))
    ctr_json = wd.write("ctr.json", container_config("agent", wd.image, host_process=True))
    pod = wd.crictl("runp", "--runtime", HANDLER_PROCESS, pod_json)
    cid = wd.crictl("create", pod, ctr_json, pod_json)
    wd.crictl("start", cid)
    assert wd.crictl("exec", "-s", cid, "cmd", "/c", "echo", "on-the-host") == "on-the-host"
    status = json.loads(wd.crictl("inspectp", pod))["status"]
    assert status["state"] == "SANDBOX_READY" and status["network"] is None   # the host's network
    spec = json.loads(wd.crictl("inspect", cid))["info"]["runtimeSpec"]
    assert spec["annotations"]["microsoft.com/hostprocess-container"] == "true"
    assert spec["process"]["user"]["username"] == "NT AUTHORITY\\SYSTEM" and "network" not in spec["windows"]
    wd.crictl("stop", "--timeout", "10", cid)
    assert list(lines(logs / "agent.log")) == ["stdout F Pinging localhost"]
    wd.crictl("rm", cid)
    wd.crictl("stopp", pod)
    wd.crictl("rmp", pod)

    assert wd.cni_calls() == []
    report = wd.report()
    job = f"JobContainer_{cid}"
    assert report["calls"] == [] and report["hcn_calls"] == []
    assert report["job_calls"][:4] == [["create", job], ["set_limits", job], ["spawn", "ping -t localhost"],
                                       ["spawn", "cmd /c echo on-the-host"]]
    assert report["job_calls"][-1] == ["close", job] and ["terminate", job] in report["job_calls"]
    assert report["problems"] == []


def test_hyperv_pod_boots_a_utility_vm_and_hosts_its_container(wd: WinDaemon, hcs_21h2: ClosedWorld) -> None:
    pod_json = wd.write("pod.json", pod_config("iso"))
    ctr_json = wd.write("ctr.json", container_config("iso", wd.image, resources={"cpu_maximum": 2500}))
    pod = wd.crictl("runp", "--runtime", HANDLER_HYPERV, pod_json)
    cid = wd.crictl("create", pod, ctr_json, pod_json)
    wd.crictl("start", cid)
    assert wd.crictl("exec", "-s", cid, "cmd", "/c", "echo", "in-the-vm") == "in-the-vm"
    spec = json.loads(wd.crictl("inspect", cid))["info"]["runtimeSpec"]
    assert spec["windows"]["hyperv"] == {} and spec["windows"]["resources"] == {"cpu": {"maximum": 2500}}
    wd.crictl("stop", "--timeout", "10", cid)
    wd.crictl("rm", cid)
    wd.crictl("stopp", pod)
    wd.crictl("rmp", pod)

    report = wd.report()
    uvm = f"{pod}@vm"
    uvm_scratch = str(wd.daemon.state / "windows" / "hyperv" / "uvm" / pod / "sandbox.vhdx")
    vhd = str(wd.daemon.root / "containers" / cid / "scratch" / "sandbox.vhdx")
    print(hcs_calls(report))
    assert hcs_calls(report) == [
        f"HcsGrantVmAccess {uvm} {uvm_scratch}",
        f"HcsCreateComputeSystem {uvm}",
        f"HcsStartComputeSystem {uvm}",
        f"HcsGrantVmAccess {uvm} {vhd}",
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/Scsi/0/Attachments/1",
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/VirtualSmb/Shares",   # one share per layer
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/VirtualSmb/Shares",
        f"HcsCreateComputeSystem {cid}",
        "HcsGetComputeSystemProperties {}",
        f"HcsStartComputeSystem {cid}",
        f"HcsCreateProcess {cid} ping -t localhost",
        f"HcsCreateProcess {cid} cmd /c echo in-the-vm",
        "HcsCloseProcess 4004",
        "HcsSignalProcess 4000 CtrlShutdown",
        f"HcsShutDownComputeSystem {cid}",
        "HcsCloseProcess 4000",
        f"HcsTerminateComputeSystem {cid}",
        f"HcsCloseComputeSystem {cid}",
        f"HcsModifyComputeSystem {uvm} Remove VirtualMachine/Devices/VirtualSmb/Shares",
        f"HcsModifyComputeSystem {uvm} Remove VirtualMachine/Devices/VirtualSmb/Shares",
        f"HcsModifyComputeSystem {uvm} Remove VirtualMachine/Devices/Scsi/0/Attachments/1",
        f"HcsShutDownComputeSystem {uvm}",
        f"HcsCloseComputeSystem {uvm}",
    ]
    hosted = [doc for definition, doc in report["documents"] if definition == "ComputeSystem" and "HostedSystem" in doc]
    assert [d["HostingSystemId"] for d in hosted] == [uvm]
    assert [c for c, _ in report["hcn_calls"]] == ["create_namespace", "delete_namespace"]
    assert report["layer_calls"] == []      # Hyper-V: layers are shared into the VM, not mounted on the host
    assert_documents_valid(report, hcs_21h2)


def _run_pod(client: Any, name: str, handler: str = HANDLER_PROCESS, host_process: bool = False) -> str:
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="winwire", uid=f"u-{name}"),
                                 hostname=name)
    config.windows.security_context.host_process = host_process
    return str(client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                            timeout=30).pod_sandbox_id)


def _ctr_config(image: str, name: str = "app") -> pb.ContainerConfig:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image))
    config.windows.resources.cpu_count = 1
    config.windows.resources.memory_limit_in_bytes = 256 << 20
    return config


def test_update_and_stats_of_a_windows_container(wd: WinDaemon, hcs_21h2: ClosedWorld) -> None:
    client = wd.daemon.client()
    try:
        pod = _run_pod(client, "upd")
        cid = client.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=_ctr_config(wd.image)), timeout=30).container_id
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
        status = client.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status
        assert (status.resources.windows.cpu_count, status.resources.windows.memory_limit_in_bytes) == (1, 256 << 20)

        update = pb.UpdateContainerResourcesRequest(container_id=cid)
        update.windows.cpu_count = 2
        update.windows.memory_limit_in_bytes = 512 << 20
        client.runtime.UpdateContainerResources(update, timeout=30)
        status = client.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status
        assert (status.resources.windows.cpu_count, status.resources.windows.memory_limit_in_bytes) == (2, 512 << 20)

        bad = pb.UpdateContainerResourcesRequest(container_id=cid)
        bad.linux.cpu_shares = 512
        with pytest.raises(grpc.RpcError) as e:
            client.runtime.UpdateContainerResources(bad, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "linux" in str(e.value.details())
        grow = pb.UpdateContainerResourcesRequest(container_id=cid)
        grow.windows.rootfs_size_in_bytes = 1 << 30
        with pytest.raises(grpc.RpcError) as e:
            client.runtime.UpdateContainerResources(grow, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rootfs_size" in str(e.value.details())

        stats = client.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=10).stats
        assert stats.attributes.id == cid and stats.cpu.HasField("usage_core_nano_seconds")
        assert stats.writable_layer.fs_id.mountpoint == str(wd.daemon.root / "containers" / cid / "scratch")
        pod_stats = client.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod), timeout=10).stats
        assert pod_stats.HasField("windows") and not pod_stats.HasField("linux")
        assert [c.attributes.id for c in pod_stats.windows.containers] == [cid]
        metrics = client.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=10).pod_metrics
        assert [m.pod_sandbox_id for m in metrics] == [pod]   # no cgroup to sample: listed, without series
        client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    finally:
        client.close()
    report = wd.report()
    updates = [doc for definition, doc in report["documents"] if definition == "ModifySettingRequest"]
    assert updates == [{"ResourcePath": "Container/Memory/SizeInMB", "RequestType": "Update", "Settings": 512},
                       {"ResourcePath": "Container/Processor", "RequestType": "Update", "Settings": {"Count": 2}}]
    created = [doc for definition, doc in report["documents"] if definition == "ComputeSystem"]
    assert created[0]["Container"]["Processor"] == {"Count": 1} and created[0]["Container"]["Memory"] == {"SizeInMB": 256}
    assert_documents_valid(report, hcs_21h2)


def _code(fn: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn(request, timeout=30)
    return e.value.code(), str(e.value.details())


def test_bad_windows_requests_are_refused_naming_the_field_and_leave_nothing(wd: WinDaemon) -> None:
    client = wd.daemon.client()
    try:
        linux_pod = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x", namespace="winwire", uid="x"))
        linux_pod.windows.security_context.run_as_username = "ContainerUser"
        code, message = _code(client.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=linux_pod))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "config.windows" in message and HANDLER_PROCESS in message
        code, message = _code(client.runtime.RunPodSandbox,
                              pb.RunPodSandboxRequest(config=linux_pod, runtime_handler="runhcs-wcow-nope"))
        assert code == grpc.StatusCode.NOT_FOUND and "runhcs-wcow-nope" in message
        hpc = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="h", namespace="winwire", uid="h"))
        hpc.windows.security_context.host_process = True
        code, message = _code(client.runtime.RunPodSandbox,
                              pb.RunPodSandboxRequest(config=hpc, runtime_handler=HANDLER_HYPERV))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "host_process" in message

        pod = _run_pod(client, "strict")
        mixed = _ctr_config(wd.image, "mixed")
        mixed.windows.security_context.host_process = True
        code, message = _code(client.runtime.CreateContainer,
                              pb.CreateContainerRequest(pod_sandbox_id=pod, config=mixed))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "host_process" in message
        linux = _ctr_config(wd.image, "linuxy")
        linux.linux.security_context.privileged = True
        code, message = _code(client.runtime.CreateContainer,
                              pb.CreateContainerRequest(pod_sandbox_id=pod, config=linux))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "config.linux" in message
        shares = _ctr_config(wd.image, "shares")
        shares.windows.resources.cpu_shares = 100
        code, message = _code(client.runtime.CreateContainer,
                              pb.CreateContainerRequest(pod_sandbox_id=pod, config=shares))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "cpu_shares" in message
        assert list(client.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
        assert not any((wd.daemon.root / "containers").iterdir())
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
        assert [p.id for p in client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items] == []
    finally:
        client.close()
    report = wd.report()
    assert report["calls"] == [] and report["layer_calls"] == [] and report["problems"] == []
    assert [c for c, _ in report["hcn_calls"]] == ["create_namespace", "delete_namespace"]


@pytest.mark.parametrize("failpoint", ["sandbox_run.after_network", "sandbox_run.after_shim"])
def test_a_failed_windows_run_pod_sandbox_releases_cni_and_the_hcn_namespace(
        registry: tuple[LocalRegistry, str], failpoint: str) -> None:
    d = _start(registry, lifecycle={"failpoints": f"{failpoint}=error"})
    try:
        client = d.daemon.client()
        try:
            with pytest.raises(grpc.RpcError):
                _run_pod(client, "doomed")
            assert list(client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items) == []
        finally:
            client.close()
        calls = d.cni_calls()
        assert [c[0] for c in calls] == ["ADD", "DEL"] and calls[0][2] == calls[1][2] != ""
        report = d.report()
        assert report["hcn_calls"] == [["create_namespace", calls[0][2]], ["delete_namespace", calls[0][2]]]
        assert report["problems"] == []
        assert not any((d.daemon.root / "sandboxes").iterdir())
    finally:
        _finish(d)


def test_a_failed_windows_create_container_deletes_the_compute_system_and_unmounts(
        registry: tuple[LocalRegistry, str], hcs_21h2: ClosedWorld) -> None:
    d = _start(registry, lifecycle={"failpoints": "container_create.after_create=error"})
    try:
        client = d.daemon.client()
        try:
            pod = _run_pod(client, "half")
            with pytest.raises(grpc.RpcError):
                client.runtime.CreateContainer(pb.CreateContainerRequest(
                    pod_sandbox_id=pod, config=_ctr_config(d.image)), timeout=30)
            assert list(client.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
        finally:
            client.close()
        report = d.report()
        names = [c for c, _ in report["calls"]]
        assert names[0] == "HcsCreateComputeSystem" and names[-1] == "HcsCloseComputeSystem"
        assert "HcsStartComputeSystem" not in names
        assert [c for c, _ in report["layer_calls"]] == ["mount", "unmount"]
        assert_documents_valid(report, hcs_21h2)
        assert not any((d.daemon.root / "containers").iterdir())
    finally:
        _finish(d)


def test_after_a_daemon_crash_windows_pods_are_recovered_from_their_records(wd: WinDaemon) -> None:
    # The fake HCS lives in the daemon's memory, so kill -9 loses every compute system: the restarted daemon
    # must find its Windows records, report the lost container as exited (255) and still clean everything up.
    pod_json = wd.write("pod.json", pod_config("crash"))
    ctr_json = wd.write("ctr.json", container_config("crash", wd.image))
    pod = wd.crictl("runp", "--runtime", HANDLER_PROCESS, pod_json)
    cid = wd.crictl("create", pod, ctr_json, pod_json)
    wd.crictl("start", cid)
    wd.daemon.kill9()
    wd.daemon.start()
    status = json.loads(wd.crictl("inspect", cid))["status"]
    assert (status["state"], status["exitCode"]) == ("CONTAINER_EXITED", 255)
    assert json.loads(wd.crictl("inspectp", pod))["status"]["runtimeHandler"] == HANDLER_PROCESS
    wd.crictl("rm", cid)
    wd.crictl("stopp", pod)
    wd.crictl("rmp", pod)
    assert wd.crictl("pods", "-q") == "" and wd.crictl("ps", "-aq") == ""
    assert [c[0] for c in wd.cni_calls()] == ["ADD", "DEL"]
    report = wd.report()      # the second daemon's fake: it never saw the lost system
    assert report["problems"] == []
    assert not any((wd.daemon.root / "containers").iterdir())
    assert not any((wd.daemon.state / "windows" / "process" / "pods").iterdir())


def test_a_crash_in_the_middle_of_a_windows_run_pod_sandbox_is_rolled_back_at_restart(
        wd: WinDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    wd.daemon.stop()
    monkeypatch.setenv("CRI_SHIM_FAILPOINTS", "sandbox_run.after_network=kill")
    wd.daemon.start()
    monkeypatch.delenv("CRI_SHIM_FAILPOINTS")
    client = wd.daemon.client()
    try:
        with pytest.raises(grpc.RpcError):
            _run_pod(client, "torn")
    finally:
        client.close()
    assert wd.daemon.proc is not None and wd.daemon.proc.wait(10) != 0
    [(command, sandbox, namespace)] = wd.cni_calls()
    assert command == "ADD"
    wd.daemon.start()   # recovery finds the CREATING record of a Windows pod: CNI DEL with its GUID, namespace
    assert wd.crictl("pods", "-q") == ""
    assert wd.cni_calls()[1:] == [["DEL", sandbox, namespace]]
    assert not any((wd.daemon.root / "sandboxes").iterdir())
    assert wd.report()["problems"] == []


def test_at_restart_the_hcn_namespaces_of_pods_that_no_longer_exist_are_removed(wd: WinDaemon) -> None:
    # The fake HCN lives in the daemon's memory, so across a restart only the daemon's ledger of the namespaces
    # it made survives: recovery must keep a live pod's entry and remove the one of a pod with no record.
    pod = wd.crictl("runp", "--runtime", HANDLER_PROCESS, wd.write("pod.json", pod_config("ledger")))
    ledger = wd.daemon.state / "windows" / "hcn-namespaces"
    [kept] = [p.name for p in ledger.iterdir()]
    orphan = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
    (ledger / orphan).write_text("f" * 64)              # a namespace made for a pod whose record is gone
    assert wd.daemon.stop() == 0
    wd.daemon.start()
    assert [p.name for p in ledger.iterdir()] == [kept]
    assert f"removed the HCN namespace {orphan} of pod {'f' * 64}" in wd.daemon.log_tail(200)
    wd.crictl("stopp", pod)
    wd.crictl("rmp", pod)
    assert list(ledger.iterdir()) == []                  # deleted with its pod
    assert wd.report()["problems"] == []
