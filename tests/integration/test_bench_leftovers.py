"""bench.compare's own clean-up checks on the real kernel: it recognises its network namespaces among others and
removes (or names) cgroup trees in every hierarchy."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from bench.compare.__main__ import own_netns
from bench.compare.targets import CGROUP_ROOT, bench_cgroup_root, remove_cgroup_tree


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    """One namespace holding an address of 10.225.0.0/16 (a bench subnet) and one holding another address."""
    tag = uuid.uuid4().hex[:6]
    names = (f"cst-bench-mine-{tag}", f"cst-bench-other-{tag}")
    try:
        for name, addr in zip(names, ("10.225.7.7/16", "10.99.7.7/16")):
            subprocess.run(["ip", "netns", "add", name], check=True)
            # a veth pair inside the namespace (no dummy module on every kernel); gone with the namespace
            subprocess.run(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
            subprocess.run(["ip", "-n", name, "addr", "add", addr, "dev", "v0"], check=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_own_netns_are_those_with_an_address_of_our_subnets(two_netns: tuple[str, str]) -> None:
    mine, other = (f"/run/netns/{n}" for n in two_netns)
    assert own_netns([mine, other], ["10.225.0.0/16", "10.226.0.0/16"]) == [mine]
    assert own_netns([mine, other], ["10.226.0.0/16"]) == []


def test_cgroup_tree_is_removed_in_every_hierarchy_and_a_busy_one_is_named() -> None:
    top = bench_cgroup_root().lstrip("/")
    rel = f"{top}/leftover-test-{uuid.uuid4().hex[:6]}"
    controllers = [c for c in ("memory", "pids", "unified") if (CGROUP_ROOT / c).is_dir()]
    fresh = [CGROUP_ROOT / c / top for c in controllers if not (CGROUP_ROOT / c / top).exists()]
    made = [CGROUP_ROOT / c / rel / "pod1" / "c1" for c in controllers]
    try:
        for d in made:
            d.mkdir(parents=True)
        busy = made[0]
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            (busy / "cgroup.procs").write_text(str(sleeper.pid))
            left = remove_cgroup_tree(rel)
            assert str(busy) in left                      # a cgroup holding a process cannot go, and is named
            assert all(not d.exists() for d in made[1:])  # the others went, bottom up
        finally:
            sleeper.kill()
            sleeper.wait()
        assert remove_cgroup_tree(rel) == []
        assert not any((CGROUP_ROOT / c / rel).exists() for c in controllers)
    finally:
        remove_cgroup_tree(rel)
        for d in fresh:   # the parent, if this test made it (the suite's leak check looks for it)
            try:
                d.rmdir()
            except OSError:
                pass
