"""Daemon restart (recover) and interactive streams on the fake HCS.

Restart: compute systems are created with ShouldTerminateOnLastHandleClosed
false, so they outlive the daemon; a new backend reopens them from its state
records (HcsOpenComputeSystem / HcsOpenProcess) and ends whatever no record or
no known pod claims. Whether real HCS keeps the systems running when the old
daemon's handles close is verified only on Windows.
"""

from __future__ import annotations

import asyncio
import json

from runtime.base import ContainerState, EventKind, ExecSpec, SandboxState, StreamKind
from runtime.windows.testing.fake_hcs import Program
from tests.windows.conftest import World, run

POD = "p" * 64
C1 = "c" * 64
C2 = "d" * 64


def test_restart_reopens_running_containers_and_stops_them_later(world: World) -> None:
    world.fake.program("srv", Program(stdout=b"hello\n", until_signalled=True, on_ctrl_shutdown=0))
    world.fake.program("oneshot", Program(exit_code=7))
    spec, done = world.container(C1, args=("srv",)), world.container(C2, args=("oneshot",))

    async def first_daemon() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod())
        for s in (spec, done):
            await b.create_container(s)
            await b.start_container(s.id)
        for _ in range(100):
            if (await b.container_status(C2)).state is ContainerState.EXITED:
                break
            await asyncio.sleep(0.02)
        await b.close()

    async def second_daemon() -> None:
        b = world.backend()
        recovered = await b.recover([POD])
        assert len(recovered) == 1 and recovered[0].status.state is SandboxState.READY
        states = {c.id: (c.state, c.exit_code) for c in recovered[0].containers}
        assert states == {C1: (ContainerState.RUNNING, 0), C2: (ContainerState.EXITED, 7)}
        stopped = await b.stop_container(C1, 5)
        assert (stopped.state, stopped.exit_code) == (ContainerState.EXITED, 0)
        await b.remove_sandbox(POD)

    run(first_daemon())
    assert world.fake.systems[C1].state == "Running"     # closing the daemon stopped nothing
    run(second_daemon())
    calls = [f"{n} {d}".strip() for n, d in world.fake.calls]
    assert f"HcsOpenComputeSystem {C1}" in calls and f"HcsOpenProcess {C1} 4000" in calls
    assert [e.container_id for e in world.events if e.kind is EventKind.EXITED] == [C2, C1]
    assert world.fake.systems == {} and world.problems() == []


def test_recover_releases_pods_the_daemon_forgot_and_orphaned_systems(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def first_daemon() -> None:
        b = await world.running(spec)
        await b.close()

    run(first_daemon())
    # A system of ours that no record names: a crash between HcsCreateComputeSystem and the record.
    orphan = world.api.create_system("orphan", json.dumps(
        {"Owner": "cri-shim", "SchemaVersion": {"Major": 2, "Minor": 1},
         "Container": {"Storage": {"Layers": [], "Path": next(iter(world.layers.mounted.values()))}}}))
    world.api.close_system(orphan)
    # And a system of another owner, which must be left alone.
    other = world.api.create_system("someone-else", json.dumps(
        {"Owner": "docker", "SchemaVersion": {"Major": 2, "Minor": 1},
         "Container": {"Storage": {"Layers": [], "Path": next(iter(world.layers.mounted.values()))}}}))

    async def second_daemon() -> None:
        b = world.backend()
        assert await b.recover([]) == []

    run(second_daemon())
    # Ours were terminated and closed (HCS forgets a stopped system with no handles); the other is untouched.
    assert list(world.fake.systems) == ["someone-else"]
    assert world.fake.systems["someone-else"].state == "Created"
    assert ("HcsTerminateComputeSystem", "orphan") in world.fake.calls
    assert world.layers.mounted == {}
    assert not list((world.root / "state" / "pods").glob("*.json"))
    world.api.close_system(other)
    assert world.problems() == []


def test_a_container_gone_during_the_restart_is_reported_exited(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def first_daemon() -> None:
        b = await world.running(spec)
        await b.close()

    async def second_daemon() -> None:
        b = world.backend()
        recovered = await b.recover([POD])
        (c,) = recovered[0].containers
        assert (c.state, c.exit_code) == (ContainerState.EXITED, 255)
        assert "gone when the runtime restarted" in c.message
        await b.remove_sandbox(POD)

    run(first_daemon())
    world.fake.crash(C1)
    world.fake.systems.pop(C1)           # HCS forgot it entirely
    run(second_daemon())
    assert world.layers.mounted == {}


def test_interactive_exec_streams_stdin_to_stdout_and_reports_the_exit(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    world.fake.program("cat", Program(echo_stdin=True, exit_code=0))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await world.running(spec)
        session = await b.exec(C1, ExecSpec(("cat",), stdin=True))
        await session.write_stdin(b"ping\n")
        assert await session.read() == (StreamKind.STDOUT, b"ping\n")
        await session.close_stdin()
        assert await session.wait() == 0
        assert await session.read() is None
        await session.close()
        await b.stop_container(C1, 0)
        await b.remove_sandbox(POD)

    run(flow())
    modified = [d for n, d in world.fake.calls if n == "HcsModifyProcess"]
    assert modified == ["4004 CloseHandle"]
    assert world.problems() == []


def test_closing_an_exec_session_kills_its_process(world: World) -> None:
    world.fake.program("srv", Program(until_signalled=True))
    spec = world.container(C1, args=("srv",))

    async def flow() -> None:
        b = await world.running(spec)
        session = await b.exec(C1, ExecSpec(("srv", "--forever"), tty=True))
        await session.resize(120, 40)
        await session.close()
        await b.stop_container(C1, 0)
        await b.remove_sandbox(POD)

    run(flow())
    assert ("HcsModifyProcess", "4004 ConsoleSize") in world.fake.calls
    assert ("HcsTerminateProcess", "4004") in world.fake.calls
    tty = [doc for d, doc in world.fake.documents if d == "ProcessParameters"][1]
    assert tty["EmulateConsole"] is True and "CreateStdErrPipe" not in tty
    assert world.problems() == []


def test_attach_sees_output_and_feeds_stdin_of_the_main_process(world: World) -> None:
    world.fake.program("cat", Program(echo_stdin=True, exit_code=5))
    spec = world.container(C1, args=("cat",), stdin=True)

    async def flow() -> None:
        b = await world.running(spec)
        session = await b.attach(C1, True, True, True)
        await session.write_stdin(b"through attach\n")
        assert await session.read() == (StreamKind.STDOUT, b"through attach\n")
        await session.close()
        await b.stop_container(C1, 0)
        assert (await b.container_status(C1)).state is ContainerState.EXITED
        await b.remove_sandbox(POD)

    run(flow())
    log = (world.root / "logs" / POD / f"{C1}.log").read_text()
    assert log.endswith("stdout F through attach\n")
    assert world.problems() == []


def test_a_host_process_container_is_found_again_after_a_restart(world: World) -> None:
    world.jobs.program("agent", Program(until_signalled=True, on_ctrl_shutdown=0))
    spec = world.container(C1, args=("agent",), host_process=True)

    async def first_daemon() -> None:
        b = world.backend()
        await b.create_sandbox(world.pod(host_process=True))
        await b.create_container(spec)
        await b.start_container(C1)
        await b.close()

    async def second_daemon() -> None:
        b = world.backend()
        recovered = await b.recover([POD])
        assert [c.state for c in recovered[0].containers] == [ContainerState.RUNNING]
        stopped = await b.stop_container(C1, 5)
        # The exit code lived in the old daemon's process handle; the job only tells that it emptied.
        assert (stopped.state, stopped.exit_code) == (ContainerState.EXITED, 255)
        await b.remove_sandbox(POD)

    run(first_daemon())
    assert world.jobs.open_handles() == []       # closed at daemon shutdown, the job itself lives on
    run(second_daemon())
    assert world.problems() == []


def test_attach_honours_the_stream_selection_and_refuses_stdin_after_exit(world: World) -> None:
    world.fake.program("cat", Program(echo_stdin=True))
    spec = world.container(C1, args=("cat",), stdin=True)

    async def flow() -> None:
        b = await world.running(spec)
        session = await b.attach(C1, True, False, True)          # stderr only
        await session.write_stdin(b"not for this client\n")
        await b.stop_container(C1, 0)
        assert await asyncio.wait_for(session.read(), 5) is None  # stdout data filtered, then both EOFs
        try:
            await session.write_stdin(b"late")
            raise AssertionError("stdin of an exited container accepted data")
        except BrokenPipeError:
            pass
        await session.close()
        await b.remove_sandbox(POD)

    run(flow())
    assert world.problems() == []
