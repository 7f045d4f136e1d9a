"""Full CRI flows through the runtime interface (WindowsBackend) on the fake HCS.

The fake HCS is a state machine standing in for computecore.dll, which cannot
run on Linux: it enforces call order, handle lifetimes and HRESULTs and
validates every document closed-world against the official 21H2 schema (see
runtime/windows/testing/fake_hcs.py). These tests prove the documented call
sequence and our error handling; they cannot prove HCS itself behaves as
documented (README: not verified on Windows yet).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from runtime.base import ContainerState, EventKind, ExecResult, ExecSpec, SandboxState
from runtime.windows.testing.fake_hcs import Program
from tests.windows.conftest import NAMESPACE, World, run

POD = "p" * 64
C1 = "c" * 64
C2 = "d" * 64


def hcs_calls(world: World) -> list[str]:
    """The HCS calls in order, without the operation bookkeeping."""
    return [f"{name} {detail}".strip() for name, detail in world.fake.calls]


def log_lines(path: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in Path(path).read_text().splitlines()]


def test_process_isolated_lifecycle_makes_the_documented_hcs_calls_in_order(world: World) -> None:
    world.fake.program("ping", Program(stdout=b"ready\r\n", until_signalled=True, on_ctrl_shutdown=0))
    world.fake.program("echo exec", Program(stdout=b"exec out\n", stderr=b"exec err\n", exit_code=3))
    spec = world.container(C1, args=("ping", "-t", "localhost"))

    async def flow() -> None:
        b = world.backend()
        status = await b.create_sandbox(world.pod())
        assert status.state is SandboxState.READY and status.namespaces == {"network": NAMESPACE}
        assert (await b.create_container(spec)).state is ContainerState.CREATED
        started = await b.start_container(C1)
        assert started.state is ContainerState.RUNNING and started.pid
        result = await b.exec_sync(C1, ExecSpec(("cmd", "/c", "echo exec")), timeout=10, output_cap=1 << 20)
        assert result == ExecResult(3, b"exec out\n", b"exec err\n")
        stopped = await b.stop_container(C1, 10)
        assert (stopped.state, stopped.exit_code, stopped.reason) == (ContainerState.EXITED, 0, "Completed")
        await b.delete_container(C1)
        await b.stop_sandbox(POD, 10)
        await b.remove_sandbox(POD)

    run(flow())
    assert world.fake.systems == {}, "HCS still knows a system after RemovePodSandbox"
    assert hcs_calls(world) == [
        f"HcsCreateComputeSystem {C1}",
        "HcsGetComputeSystemProperties {}",
        f"HcsStartComputeSystem {C1}",
        f"HcsCreateProcess {C1} ping -t localhost",
        f"HcsCreateProcess {C1} cmd /c \"echo exec\"",
        "HcsCloseProcess 4004",
        "HcsSignalProcess 4000 CtrlShutdown",
        f"HcsShutDownComputeSystem {C1}",
        "HcsCloseProcess 4000",
        f"HcsTerminateComputeSystem {C1}",
        f"HcsCloseComputeSystem {C1}",
    ]
    assert log_lines(spec.stdio.log_path or "") == ["stdout F ready"]
    assert world.problems() == []


def test_every_document_sent_to_hcs_is_valid_against_the_1809_schema_too(world: World, hcs_1809: object) -> None:
    world.fake.program("ping", Program(until_signalled=True))
    spec = world.container(C1, args=("ping",), windows={"resources": {"cpu": {"maximum": 2500},
                                                                      "memory": {"limit": 256 << 20}}})

    async def flow() -> None:
        b = await world.running(spec)
        await b.container_stats(C1)
        await b.stop_container(C1, 0)
        await b.delete_container(C1)
        await b.remove_sandbox(POD)

    run(flow())
    assert world.fake.documents, "the fake saw no documents"
    # Names that changed between the 1809 and 21H2 SDKs; the fields are the same.
    renamed = {"Container_Processor": "Processor", "Container_Memory": "Memory",
               "System_PropertyQuery": "PropertyQuery_2"}
    for definition, doc in world.fake.documents:
        text = json.dumps(doc).replace('"Container_', '"')
        assert hcs_1809.errors(renamed.get(definition, definition), json.loads(text)) == [], definition  # type: ignore[attr-defined]
    assert world.problems() == []


def test_stop_terminates_a_container_that_ignores_ctrl_shutdown_after_the_grace_period(world: World) -> None:
    world.fake.program("stubborn", Program(until_signalled=True, on_ctrl_shutdown=None))
    world.fake.signal_blocks_until_exit = True     # servercore: the signal call blocks until the process dies
    spec = world.container(C1, args=("stubborn.exe",))

    async def flow() -> None:
        b = await world.running(spec)
        status = await b.stop_container(C1, 0.3)
        assert status.state is ContainerState.EXITED
        assert status.exit_code == 1 and status.reason == "Error"   # terminated
        await b.remove_sandbox(POD)

    run(flow())
    names = [c for c, _ in world.fake.calls]
    assert names.index("HcsSignalProcess") < names.index("HcsTerminateProcess") < names.index("HcsShutDownComputeSystem")
    assert world.problems() == []


def test_container_exit_is_reported_as_an_event_with_a_signed_exit_code(world: World) -> None:
    # 0xC000013A (STATUS_CONTROL_C_EXIT) is how Windows reports a Ctrl+C death; CRI carries int32.
    world.fake.program("crash", Program(stdout=b"bye", exit_code=0xC000013A))
    spec = world.container(C1, args=("crash.exe",))

    async def flow() -> None:
        b = await world.running(spec)
        for _ in range(100):
            if (await b.container_status(C1)).state is ContainerState.EXITED:
                break
            await asyncio.sleep(0.05)
        status = await b.container_status(C1)
        assert status.exit_code == 0xC000013A - (1 << 32) and status.reason == "Error"
        await b.delete_container(C1)
        await b.remove_sandbox(POD)

    run(flow())
    exits = [e for e in world.events if e.kind is EventKind.EXITED]
    assert [(e.sandbox_id, e.container_id) for e in exits] == [(POD, C1)]
    # A trailing partial line is flushed as a P record when the stream ends.
    assert log_lines(spec.stdio.log_path or "") == ["stdout P bye"]
    assert world.problems() == []


def test_two_containers_share_the_pod_namespace(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    a, b_spec = world.container(C1, args=("srv",)), world.container(C2, args=("srv",))

    async def flow() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod())
        for s in (a, b_spec):
            await b.create_container(s)
            await b.start_container(s.id)
        await b.stop_sandbox(POD, 1)
        assert (await b.container_status(C1)).state is ContainerState.EXITED
        await b.remove_sandbox(POD)

    run(flow())
    creates = [d for d, doc in world.fake.documents if d == "ComputeSystem"]
    assert len(creates) == 2
    namespaces = {doc["Container"]["Networking"]["Namespace"] for d, doc in world.fake.documents
                  if d == "ComputeSystem"}
    assert namespaces == {NAMESPACE}
    assert world.problems() == []


def test_stats_convert_100ns_units_and_report_the_writable_layer(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await world.running(spec)
        first = await b.container_stats(C1)
        second = await b.container_stats(C1)
        assert first.cpu_usage_ns == 1_000_000 * 100        # TotalRuntime100ns x 100
        assert second.cpu_usage_ns is not None and second.cpu_usage_ns > first.cpu_usage_ns
        assert first.memory_working_set_bytes == 30 << 20
        assert first.memory_usage_bytes == 50 << 20
        assert first.writable_layer_mountpoint == spec.rootfs.scratch
        assert first.writable_layer_bytes == len(b"vhdx-template")
        pod_stats = await b.sandbox_stats(POD)
        assert set(pod_stats.containers) == {C1}
        await b.stop_container(C1, 0)
        await b.remove_sandbox(POD)

    run(flow())
    assert world.problems() == []


def test_scratch_is_a_copy_of_the_base_layers_blank_vhdx(world: World) -> None:
    spec = world.container(C1)

    async def flow() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod())
        await b.create_container(spec)
        vhd = os.path.join(spec.rootfs.scratch, "sandbox.vhdx")
        assert Path(vhd).read_bytes() == b"vhdx-template"
        assert world.layers.mounted == {spec.rootfs.scratch: world.layers.mounted[spec.rootfs.scratch]}
        await b.delete_container(C1)
        assert world.layers.mounted == {}
        await b.remove_sandbox(POD)

    run(flow())
    assert world.problems() == []
