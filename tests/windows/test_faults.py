"""Failure paths: HCS errors, timeouts, quirks and bad input leave nothing behind and say what failed.

HRESULTs are injected into the fake HCS (a stand-in for computecore.dll, which
cannot run on Linux); the assertions are about what a CRI caller would see and
about leaks (handles, operations, returned strings, mounts, records).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from runtime.base import (ContainerState, EventKind, ExecSpec, InvalidSpec, ObjectNotFound, RuntimeFailure,
                          Unsupported, WrongState)
from runtime.windows._abi import HResult
from runtime.windows.hcs import HcsError
from runtime.windows.layer_mount import LayerError
from runtime.windows.testing.fake_hcs import E_INVALIDARG, Program
from tests.windows.conftest import World, run

POD = "p" * 64
C1 = "c" * 64


async def ready_pod(world: World, **cfg: object) -> object:
    b = world.backend(**cfg)  # type: ignore[arg-type]
    await b.create_sandbox(world.pod())
    return b


def test_create_failing_in_hcs_unmounts_and_forgets_the_container(world: World) -> None:
    world.fake.fail("HcsCreateComputeSystem", HResult.IMAGE_MISMATCH)
    spec = world.container(C1)

    async def flow() -> None:
        b = await ready_pod(world)
        with pytest.raises(HcsError, match="HCS_E_IMAGE_MISMATCH"):
            await b.create_container(spec)  # type: ignore[attr-defined]
        with pytest.raises(ObjectNotFound):
            await b.container_status(C1)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert world.layers.mounted == {} and world.problems() == []


def test_a_create_slower_than_the_timeout_is_cancelled_and_undone(world: World) -> None:
    world.fake.delay("HcsCreateComputeSystem", 2.0)
    spec = world.container(C1)

    async def flow() -> None:
        b = await ready_pod(world, operation_timeout_ms=200)
        with pytest.raises(HcsError, match="OPERATION_TIMEOUT"):
            await b.create_container(spec)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert ("HcsCancelOperation", "HcsCreateComputeSystem") in world.fake.calls
    assert world.fake.systems == {} or all(s.state != "Running" for s in world.fake.systems.values())
    assert world.layers.mounted == {} and world.problems() == []


def test_a_failed_process_start_is_reported_as_start_error_and_cleans_up(world: World) -> None:
    world.fake.fail("HcsCreateProcess", 0x80070002)       # ERROR_FILE_NOT_FOUND: no such program
    spec = world.container(C1, args=("missing.exe",))

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        with pytest.raises(HcsError, match="HcsCreateProcess failed with 0x80070002"):
            await b.start_container(C1)  # type: ignore[attr-defined]
        status = await b.container_status(C1)  # type: ignore[attr-defined]
        assert (status.state, status.exit_code, status.reason) == (ContainerState.EXITED, 128, "StartError")
        assert "0x80070002" in status.message
        await b.delete_container(C1)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    names = [c for c, _ in world.fake.calls]
    assert "HcsShutDownComputeSystem" in names       # the started system was stopped again
    assert world.problems() == []


def test_ws2022_create_process_wait_quirk_recovers_with_get_process_info(world: World) -> None:
    world.fake.quirk_create_process_wait_fails = True
    world.fake.program("srv", Program(stdout=b"ok\n", until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        started = await b.start_container(C1)  # type: ignore[attr-defined]
        assert started.state is ContainerState.RUNNING and started.pid == 4000
        await b.stop_container(C1, 0)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    names = [c for c, _ in world.fake.calls]
    assert names.index("HcsCreateProcess") + 1 == names.index("HcsGetProcessInfo")
    assert world.problems() == []


def test_without_the_quirk_get_process_info_is_never_called(world: World) -> None:
    spec = world.container(C1)

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        await b.start_container(C1)  # type: ignore[attr-defined]
        await b.stop_container(C1, 1)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert "HcsGetProcessInfo" not in [c for c, _ in world.fake.calls]
    assert world.problems() == []


def test_a_failed_shutdown_after_exit_falls_back_to_terminate(world: World) -> None:
    world.fake.fail("HcsShutDownComputeSystem", 0x80070005)    # access denied
    spec = world.container(C1)

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        await b.start_container(C1)  # type: ignore[attr-defined]
        for _ in range(100):
            if world.fake.systems[C1].state == "Stopped":
                break
            await asyncio.sleep(0.02)
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    names = [c for c, _ in world.fake.calls]
    assert names.index("HcsShutDownComputeSystem") < names.index("HcsTerminateComputeSystem")
    assert world.problems() == []


def test_a_layer_mount_failure_creates_no_hcs_system(world: World) -> None:
    world.layers.fail_mount = 0x80070015       # ERROR_NOT_READY
    spec = world.container(C1)

    async def flow() -> None:
        b = await ready_pod(world)
        with pytest.raises(LayerError, match="PrepareLayer"):
            await b.create_container(spec)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert world.fake.calls == [] and world.problems() == []


@pytest.mark.parametrize("windows, mounts, field", [
    ({"resources": {"cpu": {"count": 2, "maximum": 5000}}}, None, "windows.resources.cpu"),
    ({"resources": {"cpu": {"maximum": 20000}}}, None, "windows.resources.cpu.maximum"),
    ({"resources": {"memory": {"limit": 1000}}}, None, "windows.resources.memory.limit"),
    ({"resources": {"cpu": {"shares": "high"}}}, None, "windows.resources.cpu.shares"),
    ({"network": {"networkNamespace": "not-a-guid"}}, None, "windows.network.networkNamespace"),
    ({"devices": [{"id": "x", "idType": "class"}]}, None, "windows.devices[0].id"),
    (None, [{"source": "C:\\data", "destination": "/data"}], "mounts[0].destination"),
    (None, [{"source": "C:\\data", "destination": "C:"}], "mounts[0].destination"),
    (None, [{"source": "relative\\dir", "destination": "C:\\data"}], "mounts[0].source"),
    (None, [{"source": "C:\\a", "destination": "C:\\d"}, {"source": "C:\\b", "destination": "c:\\D"}],
     "mounts[1].destination"),
    (None, [{"source": "\\\\.\\pipe\\docker", "destination": "C:\\pipe"}], "mounts[0].destination"),
])
def test_invalid_specs_are_rejected_naming_the_field_before_anything_is_made(
        world: World, windows: dict[str, object] | None, mounts: list[dict[str, object]] | None, field: str) -> None:
    spec = world.container(C1, windows=windows, mounts=mounts)

    async def flow() -> None:
        b = await ready_pod(world)
        with pytest.raises(InvalidSpec) as e:
            await b.create_container(spec)  # type: ignore[attr-defined]
        assert e.value.field == field, e.value.message
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert world.fake.calls == [] and world.layers.calls == [] and world.problems() == []


def test_a_linux_spec_or_a_missing_bundle_is_refused(world: World) -> None:
    linux = world.container(C1, extra={"windows": None, "linux": {"namespaces": []}})
    missing = world.container("e" * 64)
    (world.root / "bundles" / ("e" * 64) / "config.json").unlink()

    async def flow() -> None:
        b = await ready_pod(world)
        with pytest.raises(InvalidSpec, match="Linux spec"):
            await b.create_container(linux)  # type: ignore[attr-defined]
        with pytest.raises(InvalidSpec, match="no OCI runtime spec"):
            await b.create_container(missing)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert world.problems() == []


def test_calls_in_the_wrong_state_are_refused_clearly(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await ready_pod(world)
        with pytest.raises(ObjectNotFound):
            await b.start_container("nope")  # type: ignore[attr-defined]
        await b.create_container(spec)  # type: ignore[attr-defined]
        with pytest.raises(WrongState, match="already exists"):
            await b.create_container(spec)  # type: ignore[attr-defined]
        with pytest.raises(WrongState, match="not running"):
            await b.exec_sync(C1, ExecSpec(("x",)), 1, 10)  # type: ignore[attr-defined]
        await b.start_container(C1)  # type: ignore[attr-defined]
        with pytest.raises(WrongState, match="not created"):
            await b.start_container(C1)  # type: ignore[attr-defined]
        with pytest.raises(WrongState, match="stop it before removing"):
            await b.delete_container(C1)  # type: ignore[attr-defined]
        with pytest.raises(Unsupported, match="signal 10"):
            await b.kill_container(C1, 10)  # type: ignore[attr-defined]
        await b.kill_container(C1, 9)  # type: ignore[attr-defined]
        for _ in range(100):
            if (await b.container_status(C1)).state is ContainerState.EXITED:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        assert (await b.container_status(C1)).exit_code == 1  # type: ignore[attr-defined]
        await b.stop_sandbox(POD, 1)  # type: ignore[attr-defined]
        with pytest.raises(WrongState, match="not ready"):
            await b.create_container(world.container("e" * 64))  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]   # idempotent
        await b.delete_container(C1)  # type: ignore[attr-defined]  # idempotent

    run(flow())
    assert world.problems() == []


def test_exec_sync_timeout_kills_the_process_and_says_so(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    world.fake.program("hang", Program(stdout=b"partial", until_signalled=True, on_ctrl_shutdown=None))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        await b.start_container(C1)  # type: ignore[attr-defined]
        r = await b.exec_sync(C1, ExecSpec(("hang.exe",)), 0.3, 4)  # type: ignore[attr-defined]
        assert r.timed_out and r.stdout == b"part"       # capped at output_cap
        assert (await b.container_status(C1)).state is ContainerState.RUNNING  # type: ignore[attr-defined]
        await b.stop_container(C1, 0)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert ("HcsTerminateProcess", "4004") in world.fake.calls
    assert world.problems() == []


def test_a_crashed_container_system_is_reported_exited(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        await b.start_container(C1)  # type: ignore[attr-defined]
        world.fake.crash(C1)
        for _ in range(100):
            if (await b.container_status(C1)).state is ContainerState.EXITED:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        status = await b.container_status(C1)  # type: ignore[attr-defined]
        assert status.state is ContainerState.EXITED and status.reason == "Error"
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert [e.kind for e in world.events] == [EventKind.EXITED]
    assert world.problems() == []


def test_update_resources_sends_modify_requests_hcs_accepts(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        await b.start_container(C1)  # type: ignore[attr-defined]
        await b.update_resources(C1, {"memory": {"limit": 511 << 20}, "cpu": {"maximum": 5000}})  # type: ignore[attr-defined]
        with pytest.raises(InvalidSpec, match="mutually exclusive"):
            await b.update_resources(C1, {"cpu": {"maximum": 5000, "shares": 2}})  # type: ignore[attr-defined]
        await b.stop_container(C1, 0)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    mods = world.fake.systems.get(C1)
    assert mods is None     # removed
    sent = [doc for d, doc in world.fake.documents if d == "ModifySettingRequest"]
    assert sent == [
        {"ResourcePath": "Container/Memory/SizeInMB", "RequestType": "Update", "Settings": 512},
        {"ResourcePath": "Container/Processor", "RequestType": "Update", "Settings": {"Maximum": 5000}},
    ]
    assert world.problems() == []


def test_an_hcs_error_message_includes_the_result_error_document(world: World) -> None:
    world.fake.fail("HcsStartComputeSystem", E_INVALIDARG)
    spec = world.container(C1)

    async def flow() -> None:
        b = await ready_pod(world)
        await b.create_container(spec)  # type: ignore[attr-defined]
        with pytest.raises(RuntimeFailure) as e:
            await b.start_container(C1)  # type: ignore[attr-defined]
        assert "HcsStartComputeSystem failed with E_INVALIDARG: injected failure" in e.value.message
        await b.delete_container(C1)  # type: ignore[attr-defined]
        await b.remove_sandbox(POD)  # type: ignore[attr-defined]

    run(flow())
    assert world.problems() == []
    assert json  # the fake returns ResultError documents as JSON
