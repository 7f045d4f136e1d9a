"""Hyper-V and HostProcess pods through the runtime interface, on the fake HCS / fake job objects.

Hyper-V: the documents and call order follow hcsshim's HCS-managed utility VM
route (§2.3 of the Windows brief); whether such a VM boots and hosts containers
is verified only on a real node. HostProcess: job objects instead of HCS.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from runtime.base import ContainerState, EventKind, ExecSpec, InvalidSpec, SandboxState, Unsupported
from runtime.windows.testing.fake_hcs import Program
from tests.windows.conftest import NAMESPACE, World, run

POD = "p" * 64
C1 = "c" * 64
C2 = "d" * 64
EP = "5e3b7c1a-2d4f-4a6b-8c9d-0e1f2a3b4c5d"


def test_hyperv_pod_boots_a_utility_vm_and_hosts_containers_in_it(world: World) -> None:
    world.fake.program("srv", Program(stdout=b"up\n", until_signalled=True))
    world.hcn.namespaces[NAMESPACE] = []
    world.hcn.add_endpoint(NAMESPACE, EP, "10.244.1.5", "00-15-5D-01-02-03")
    app = world.layer("app")
    base = world.base_layer()
    a = world.container(C1, args=("srv",), layers=(base, app),
                        windows={"resources": {"cpu": {"maximum": 2500}}})
    b_spec = world.container(C2, args=("srv",), layers=(base, app))

    async def flow() -> None:
        b = world.backend(hyperv=True, name="runhcs-wcow-hypervisor")
        await b.create_sandbox(world.pod())
        for s in (a, b_spec):
            await b.create_container(s)
            await b.start_container(s.id)
        assert (await b.exec_sync(C1, ExecSpec(("cmd", "/c", "ver")), 5, 1024)).exit_code == 0
        await b.stop_sandbox(POD, 1)
        await b.remove_sandbox(POD)

    run(flow())
    uvm = f"{POD}@vm"
    calls = [f"{n} {d}".strip() for n, d in world.fake.calls if n != "HcsCancelOperation"]
    uvm_scratch = str(world.root / "state" / "uvm" / POD / "sandbox.vhdx")
    c1_vhd = os.path.join(a.rootfs.scratch, "sandbox.vhdx")
    # The utility VM: its scratch granted before it is created, then started, then given the pod's NIC.
    assert calls[:5] == [
        f"HcsGrantVmAccess {uvm} {uvm_scratch}",
        f"HcsCreateComputeSystem {uvm}",
        f"HcsStartComputeSystem {uvm}",
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/NetworkAdapters/{EP}",
        f"HcsGrantVmAccess {uvm} {c1_vhd}",
    ]
    # The first container: its scratch on SCSI LUN 1, each layer shared once, then the hosted system.
    layer_ids = [world.layers.layer_id(app), world.layers.layer_id(base)]
    assert calls[5:9] == [
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/Scsi/0/Attachments/1",
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/VirtualSmb/Shares",
        f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/VirtualSmb/Shares",
        f"HcsCreateComputeSystem {C1}",
    ]
    # The second container reuses the shares (reference-counted): only its SCSI disk is added.
    second = calls[calls.index(f"HcsCreateComputeSystem {C1}"):calls.index(f"HcsCreateComputeSystem {C2}")]
    assert [c for c in second if "VirtualSmb" in c] == []
    assert f"HcsModifyComputeSystem {uvm} Add VirtualMachine/Devices/Scsi/0/Attachments/2" in second
    hosted_docs = [d for k, d in world.fake.documents if k == "ComputeSystem" and "HostedSystem" in d]
    assert [d["HostingSystemId"] for d in hosted_docs] == [uvm, uvm]
    hosted = hosted_docs[0]["HostedSystem"]["Container"]
    assert [layer["Id"] for layer in hosted["Storage"]["Layers"]] == layer_ids
    # ScaleCpuLimitsToSandbox: 25% of 4 host CPUs is 50% of the 2 vCPUs.
    assert hosted["Processor"] == {"Maximum": 5000}
    assert world.fake.systems == {} and world.problems() == []
    assert not (world.root / "state" / "uvm" / POD).exists()


def test_hyperv_needs_a_base_layer_that_can_boot_a_utility_vm(world: World) -> None:
    spec = world.container(C1, layers=(world.base_layer("servercore-no-uvm", uvm=False),))

    async def flow() -> None:
        b = world.backend(hyperv=True)
        await b.create_sandbox(world.pod())
        with pytest.raises(InvalidSpec, match="UtilityVM"):
            await b.create_container(spec)
        assert b._pods[POD].containers == {}
        await b.remove_sandbox(POD)

    run(flow())
    assert world.fake.calls == [] and world.problems() == []


def test_host_process_container_runs_in_a_job_object_with_the_mount_point_env(world: World) -> None:
    world.jobs.program("agent", Program(stdout=b"node agent\n", until_signalled=True, on_ctrl_shutdown=0))
    spec = world.container(C1, args=("agent.exe", "--flag"), host_process=True,
                           windows={"resources": {"cpu": {"count": 2}, "memory": {"limit": 1 << 30}}})

    async def flow() -> None:
        b = world.backend()
        status = await b.create_sandbox(world.pod(host_process=True))
        assert status.namespaces == {}
        await b.create_container(spec)
        started = await b.start_container(C1)
        assert started.state is ContainerState.RUNNING
        r = await b.exec_sync(C1, ExecSpec(("cmd", "/c", "whoami")), 5, 1024)
        assert r.exit_code == 0
        stopped = await b.stop_container(C1, 5)
        assert stopped.exit_code == 0
        await b.remove_sandbox(POD)

    run(flow())
    job = f"JobContainer_{C1}"
    assert world.jobs.calls[:3] == [("create", job), ("set_limits", job), ("spawn", "agent.exe --flag")]
    assert world.jobs.by_name[job].limits.cpu_rate == 5000          # 2 of 4 host CPUs
    assert world.jobs.by_name[job].limits.memory_bytes == 1 << 30
    proc = next(p for p in world.jobs.procs.values() if p.spec.command_line == "agent.exe --flag")
    volume = proc.spec.env["CONTAINER_SANDBOX_MOUNT_POINT"]
    assert volume.startswith("\\\\?\\Volume{") and proc.spec.cwd == "C:\\"
    assert proc.signals == 1
    assert world.fake.calls == []                   # no HCS at all
    assert Path(spec.stdio.log_path or "").read_text().endswith("stdout F node agent\n")
    assert world.problems() == []


def test_host_process_must_match_between_pod_and_container(world: World) -> None:
    hpc = world.container(C1, host_process=True)

    async def flow() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod())
        with pytest.raises(InvalidSpec, match="host_process"):
            await b.create_container(hpc)
        await b.create_sandbox(world.pod("q" * 64, host_process=True))
        with pytest.raises(InvalidSpec, match="host_process"):
            await b.create_container(world.container(C2, "q" * 64))
        await b.remove_sandbox(POD)
        await b.remove_sandbox("q" * 64)

    run(flow())
    assert world.problems() == []


def test_host_process_rejects_other_accounts_and_hyperv(world: World) -> None:
    spec = world.container(C1, host_process=True, extra={"process": {"args": ["x"], "cwd": "C:\\",
                                                                     "user": {"username": "ContainerAdministrator"}}})

    async def flow() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod(host_process=True))
        with pytest.raises(Unsupported, match="username"):
            await b.create_container(spec)
        await b.remove_sandbox(POD)
        hv = world.backend(hyperv=True)
        with pytest.raises(Unsupported, match="Hyper-V"):
            await hv.create_sandbox(world.pod(host_process=True))

    run(flow())
    assert world.jobs.calls == [] and world.problems() == []


def test_host_process_update_changes_the_job_limits(world: World) -> None:
    world.jobs.program("agent", Program(until_signalled=True))
    spec = world.container(C1, args=("agent",), host_process=True)

    async def flow() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod(host_process=True))
        await b.create_container(spec)
        await b.start_container(C1)
        await b.update_resources(C1, {"cpu": {"shares": 5000}})
        assert world.jobs.by_name[f"JobContainer_{C1}"].limits.cpu_weight == 5
        stats = await b.container_stats(C1)
        assert stats.cpu_usage_ns == 1_000_000 * 100
        await b.stop_container(C1, 0)
        await b.remove_sandbox(POD)

    run(flow())
    assert world.problems() == []


def test_a_dying_utility_vm_is_reported_as_a_lost_monitor(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = world.backend(hyperv=True)
        await b.create_sandbox(world.pod())
        await b.create_container(spec)
        await b.start_container(C1)
        world.fake.crash(f"{POD}@vm")
        for _ in range(200):
            if (await b.sandbox_status(POD)).state is SandboxState.NOTREADY and \
                    (await b.container_status(C1)).state is ContainerState.EXITED:
                break
            await asyncio.sleep(0.02)
        assert (await b.sandbox_status(POD)).state is SandboxState.NOTREADY
        assert (await b.container_status(C1)).state is ContainerState.EXITED
        await b.remove_sandbox(POD)

    run(flow())
    kinds = [(e.kind, e.container_id) for e in world.events]
    assert (EventKind.MONITOR_LOST, None) in kinds and (EventKind.EXITED, C1) in kinds
    assert world.problems() == []


def test_stopping_a_hyperv_pod_is_not_a_lost_monitor(world: World) -> None:
    spec = world.container(C1)

    async def flow() -> None:
        b = world.backend(hyperv=True)
        await b.create_sandbox(world.pod())
        await b.create_container(spec)
        await b.stop_sandbox(POD, 1)
        await b.remove_sandbox(POD)

    run(flow())
    assert [e.kind for e in world.events if e.kind is EventKind.MONITOR_LOST] == []
    assert world.problems() == []


def test_a_read_only_root_is_refused_on_windows(world: World) -> None:
    from dataclasses import replace
    spec = world.container(C1)
    spec = replace(spec, rootfs=replace(spec.rootfs, readonly=True))

    async def flow() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod())
        with pytest.raises(Unsupported, match="read-only root"):
            await b.create_container(spec)
        await b.remove_sandbox(POD)

    run(flow())
    assert world.fake.calls == []
