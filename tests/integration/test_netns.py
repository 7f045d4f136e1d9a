"""runtime/linux/netns.py on the real kernel: pinned network namespaces made from a thread, never a fork."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.linux import netns
from tests.harness.daemon import make_workdir


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = make_workdir("netns")
    yield d
    for pin in d.iterdir():
        netns.remove(pin)
    shutil.rmtree(d, ignore_errors=True)


def thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def links_in(pin: Path) -> str:
    return subprocess.run(["nsenter", f"--net={pin}", "ip", "-br", "link"], check=True,
                          capture_output=True, text=True).stdout


def test_create_pins_a_new_netns_with_loopback_up_and_leaves_the_caller_in_the_host_netns(workdir: Path) -> None:
    host = thread_netns()
    pin = netns.create(workdir / "pod")
    assert netns.is_netns(pin)
    assert netns.netns_id(pin) != host
    assert thread_netns() == host
    out = links_in(pin)
    assert out.split()[0] == "lo" and "UP" in out and len(out.splitlines()) == 1, out
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f" {pin} " in mounts


def test_two_pins_are_two_namespaces(workdir: Path) -> None:
    a, b = netns.create(workdir / "a"), netns.create(workdir / "b")
    assert netns.netns_id(a) != netns.netns_id(b)


def test_create_without_loopback_leaves_lo_down(workdir: Path) -> None:
    pin = netns.create(workdir / "pod", loopback_up=False)
    assert "DOWN" in links_in(pin)


def test_create_on_an_existing_path_fails_and_keeps_the_file(workdir: Path) -> None:
    existing = workdir / "taken"
    existing.write_text("mine")
    with pytest.raises(netns.NetnsFailure, match="already exists"):
        netns.create(existing)
    assert existing.read_text() == "mine"


def test_create_in_a_missing_directory_fails_cleanly(workdir: Path) -> None:
    with pytest.raises(netns.NetnsFailure, match="pin file"):
        netns.create(workdir / "nodir" / "pod")
    assert not (workdir / "nodir").exists()


def test_remove_is_idempotent_and_tolerates_missing_and_plain_files(workdir: Path) -> None:
    pin = netns.create(workdir / "pod")
    netns.remove(pin)
    assert not pin.exists()
    assert f" {pin} " not in Path("/proc/self/mountinfo").read_text()
    netns.remove(pin)
    plain = workdir / "plain"
    plain.write_text("")
    assert not netns.is_netns(plain)
    netns.remove(plain)
    assert not plain.exists()


def test_run_in_netns_runs_inside_and_returns_the_result(workdir: Path) -> None:
    pin = netns.create(workdir / "pod")
    host = thread_netns()
    assert netns.run_in_netns(pin, thread_netns) == netns.netns_id(pin)
    assert netns.run_in_netns(pin, lambda: sorted(os.listdir("/sys/class/net"))) != []
    assert thread_netns() == host


def test_run_in_netns_reraises_the_functions_exception(workdir: Path) -> None:
    pin = netns.create(workdir / "pod")

    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        netns.run_in_netns(pin, boom)


def test_run_in_netns_refuses_a_path_that_is_not_a_netns(workdir: Path) -> None:
    plain = workdir / "plain"
    plain.write_text("")
    with pytest.raises(netns.NetnsFailure, match="cannot enter"):
        netns.run_in_netns(plain, thread_netns)
    with pytest.raises(netns.NetnsFailure, match="cannot open"):
        netns.run_in_netns(workdir / "missing", thread_netns)


def listen_inside(pin: Path) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s
    return netns.run_in_netns(pin, make)


def echo_once(server: socket.socket) -> threading.Thread:
    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_open_connection_in_netns_reaches_a_port_only_bound_inside(workdir: Path) -> None:
    pin = netns.create(workdir / "pod")
    with listen_inside(pin) as server:
        port = server.getsockname()[1]
        t = echo_once(server)
        with netns.open_connection_in_netns(pin, "127.0.0.1", port) as conn:
            conn.sendall(b"hello")
            assert conn.recv(100) == b"HELLO"
        t.join(5)
    with pytest.raises(ConnectionRefusedError):
        netns.open_connection_in_netns(pin, "127.0.0.1", port)


def test_open_port_in_netns_gives_asyncio_streams(workdir: Path) -> None:
    pin = netns.create(workdir / "pod")
    with listen_inside(pin) as server:
        t = echo_once(server)

        async def talk() -> bytes:
            reader, writer = await netns.open_port_in_netns(pin, server.getsockname()[1])
            writer.write(b"pod")
            await writer.drain()
            data = await reader.read(100)
            writer.close()
            await writer.wait_closed()
            return data

        assert asyncio.run(talk()) == b"POD"
        t.join(5)


def test_create_async_cancelled_leaves_no_pin(workdir: Path) -> None:
    async def cancel_it() -> None:
        task = asyncio.ensure_future(netns.create_async(workdir / "pod"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert not (workdir / "pod").exists()
    assert f" {workdir / 'pod'} " not in Path("/proc/self/mountinfo").read_text()


def test_create_async_and_run_in_netns_async(workdir: Path) -> None:
    async def go() -> tuple[int, int]:
        pin = await netns.create_async(workdir / "pod")
        return netns.netns_id(pin), await netns.run_in_netns_async(pin, thread_netns)

    made, seen = asyncio.run(go())
    assert made == seen
