"""The cgroup v2 code paths, against a FAKE v2 tree in tmp_path.

This host runs cgroup v1 (hybrid), so a real v2 hierarchy with controllers cannot be
used here. The fake tree holds the files the kernel shows in a v2 cgroup (same names,
same formats, values copied from a real 6.x kernel); a write replaces a file's content,
which is what reading a real cgroupfs file back after a write shows for these files.
What the fake cannot prove: that the kernel accepts the values; cgroup.kill/freeze
effects on processes. Those are marked "not verified on a real v2 host" in the README.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from runtime.linux.cgroups import (
    UNIFIED,
    Cgroup,
    CgroupBusy,
    CgroupInvalid,
    CgroupMode,
    CgroupUnsupported,
    Hierarchy,
    open_hierarchy,
)
from runtime.linux.cgroups import cgroup as cgroup_module

MiB = 1 << 20
CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"

# A v2 cgroup's interface files as a 6.x kernel shows them when every controller is enabled.
KERNEL_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": CONTROLLERS,
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 1\nfrozen 0\n",
    "cgroup.freeze": "0",
    "cgroup.kill": "",
    "cgroup.type": "domain",
    "cpu.weight": "100",
    "cpu.max": "max 100000",
    "cpu.max.burst": "0",
    "cpu.idle": "0",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\nnr_throttled 0\n"
                "throttled_usec 0\nnr_bursts 0\nburst_usec 0\n",
    "cpuset.cpus": "",
    "cpuset.mems": "",
    "io.weight": "default 100",
    "io.max": "",
    "memory.max": "max",
    "memory.high": "max",
    "memory.low": "0",
    "memory.min": "0",
    "memory.swap.max": "max",
    "memory.oom.group": "0",
    "memory.current": "73400320",
    "memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
    "memory.stat": "anon 52428800\nfile 20971520\nkernel 1048576\nshmem 0\nactive_anon 52428800\n"
                   "inactive_anon 0\nactive_file 10485760\ninactive_file 10485760\npgfault 40000\npgmajfault 7\n",
    "pids.max": "max",
    "pids.current": "3",
    "hugetlb.2MB.max": "max",
    "hugetlb.2MB.rsvd.max": "max",
    "hugetlb.1GB.max": "max",
    "hugetlb.1GB.rsvd.max": "max",
}


def populate(d: Path, **overrides: str | None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, content in {**KERNEL_FILES, **overrides}.items():
        if content is not None:
            (d / name).write_text(content)
    return d


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = populate(tmp_path / "cgroup")
    (r / "cgroup.subtree_control").write_text("cpu memory")
    return r


@pytest.fixture
def h(root: Path) -> Hierarchy:
    return open_hierarchy(root)


@pytest.fixture
def cg(h: Hierarchy, root: Path) -> Cgroup:
    # As on a real host: kubelet made the pod cgroup, the runtime makes the container's.
    populate(root / "kubepods" / "pod1", **{"cgroup.subtree_control": CONTROLLERS})
    populate(root / "kubepods", **{"cgroup.subtree_control": CONTROLLERS})
    c = h.cgroup("/kubepods/pod1/ctr")
    c.create()
    populate(root / "kubepods" / "pod1" / "ctr")
    return c


def content(cg: Cgroup, name: str) -> str:
    d = cg.dir(UNIFIED)
    assert d is not None
    return (d / name).read_text()


def test_a_v2_tree_is_detected_with_its_controllers(h: Hierarchy, root: Path) -> None:
    assert h.mode is CgroupMode.V2
    assert h.mounts == {UNIFIED: root}
    assert set(h.controllers) == set(CONTROLLERS.split())
    assert all(v == UNIFIED for v in h.controllers.values())


def test_create_makes_the_directory_and_delegates_missing_controllers(h: Hierarchy, root: Path) -> None:
    c = h.cgroup("/cri-shim-pods/ctr")
    c.create()
    assert (root / "cri-shim-pods" / "ctr").is_dir()
    assert c.procs_files() == [str(root / "cri-shim-pods" / "ctr" / "cgroup.procs")]
    # The root had only cpu and memory delegated: create() enables the rest, as runc does.
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +hugetlb +io +misc +pids +rdma"


def test_cpu_shares_become_weight_and_quota_period_become_cpu_max(cg: Cgroup) -> None:
    cg.apply({"cpu": {"shares": 1024, "quota": 50000, "period": 200000, "burst": 1000, "idle": 0}})
    assert content(cg, "cpu.weight") == "100"
    assert content(cg, "cpu.max") == "50000 200000"
    assert content(cg, "cpu.max.burst") == "1000"
    cg.apply({"cpu": {"shares": 2, "quota": -1}})
    assert content(cg, "cpu.weight") == "1"
    assert content(cg, "cpu.max") == "max 100000"
    cg.apply({"cpu": {"shares": 262144, "quota": 25000}})
    assert content(cg, "cpu.weight") == "10000"
    assert content(cg, "cpu.max") == "25000 100000"


def test_cpuset_values_are_written_as_given(cg: Cgroup) -> None:
    cg.apply({"cpu": {"cpus": "0-1,3", "mems": "0"}})
    assert content(cg, "cpuset.cpus") == "0-1,3"
    assert content(cg, "cpuset.mems") == "0"


@pytest.mark.parametrize(("memory", "expected"), [
    # OCI swap is memory+swap; v2 memory.swap.max is swap alone (runc's ConvertMemorySwapToCgroupV2Value).
    ({"limit": 64 * MiB, "swap": 96 * MiB}, {"memory.max": str(64 * MiB), "memory.swap.max": str(32 * MiB)}),
    ({"limit": 64 * MiB, "swap": 64 * MiB}, {"memory.max": str(64 * MiB), "memory.swap.max": "0"}),
    ({"limit": 64 * MiB, "swap": -1}, {"memory.max": str(64 * MiB), "memory.swap.max": "max"}),
    ({"limit": -1}, {"memory.max": "max", "memory.swap.max": "max"}),
    ({"limit": 64 * MiB}, {"memory.max": str(64 * MiB), "memory.swap.max": "max"}),
    ({"reservation": 16 * MiB}, {"memory.low": str(16 * MiB)}),
])
def test_memory_limits_convert_to_v2_files(cg: Cgroup, memory: dict[str, int], expected: dict[str, str]) -> None:
    cg.apply({"memory": memory})
    assert {name: content(cg, name) for name in expected} == expected


def test_a_swap_limit_without_a_memory_limit_is_refused(cg: Cgroup) -> None:
    with pytest.raises(CgroupInvalid) as e:
        cg.apply({"memory": {"swap": 64 * MiB}})
    assert e.value.field == "linux.resources.memory.swap"


def test_swap_max_is_skipped_where_the_kernel_has_no_swap_controller(h: Hierarchy, cg: Cgroup) -> None:
    d = cg.dir(UNIFIED)
    assert d is not None
    (d / "memory.swap.max").unlink()
    cg.apply({"memory": {"limit": 64 * MiB, "swap": 64 * MiB}})   # "0" already holds without swap
    assert content(cg, "memory.max") == str(64 * MiB)
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"memory": {"limit": 64 * MiB, "swap": 128 * MiB}})
    assert e.value.field == "linux.resources.memory.swap"


@pytest.mark.parametrize(("limit", "expected"), [(100, "100"), (-1, "max"), (0, "1")])
def test_pids_limit_goes_to_pids_max(cg: Cgroup, limit: int, expected: str) -> None:
    cg.apply({"pids": {"limit": limit}})
    assert content(cg, "pids.max") == expected


def test_hugepage_limits_set_max_and_reservation(cg: Cgroup) -> None:
    cg.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}, {"pageSize": "1GB", "limit": 0}]})
    assert content(cg, "hugetlb.2MB.max") == str(4 * MiB)
    assert content(cg, "hugetlb.2MB.rsvd.max") == str(4 * MiB)
    assert content(cg, "hugetlb.1GB.max") == "0"


def test_a_page_size_the_host_lacks_is_refused_before_anything_is_written(cg: Cgroup) -> None:
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"cpu": {"shares": 512}, "hugepageLimits": [{"pageSize": "16MB", "limit": 0}]})
    assert e.value.field == "linux.resources.hugepageLimits[0].pageSize"
    assert "hugetlb.16MB.max" in str(e.value)
    assert content(cg, "cpu.weight") == "100"


def test_unified_keys_are_written_last_and_override_converted_values(cg: Cgroup) -> None:
    cg.apply({"cpu": {"shares": 1024}, "unified": {"cpu.weight": "42", "memory.oom.group": "1",
                                                   "memory.high": "50000000"}})
    assert content(cg, "cpu.weight") == "42"
    assert content(cg, "memory.oom.group") == "1"
    assert content(cg, "memory.high") == "50000000"


@pytest.mark.parametrize("key", ["cgroup.procs", "cgroup.kill", "../memory.max", "memory/max", "Memory.max", "x"])
def test_unified_keys_that_are_not_plain_interface_files_are_invalid(cg: Cgroup, key: str) -> None:
    with pytest.raises(CgroupInvalid) as e:
        cg.apply({"unified": {key: "1"}})
    assert e.value.field == f"linux.resources.unified[{key}]"


def test_a_unified_key_of_a_controller_not_enabled_is_unsupported(cg: Cgroup) -> None:
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"unified": {"rdma.max": "mlx4_0 hca_handle=2"}})
    assert e.value.field == "linux.resources.unified[rdma.max]"
    assert "not enabled" in str(e.value)


@pytest.mark.parametrize(("resources", "field"), [
    ({"memory": {"swappiness": 10}}, "linux.resources.memory.swappiness"),
    ({"memory": {"disableOOMKiller": True}}, "linux.resources.memory.disableOOMKiller"),
    ({"cpu": {"realtimeRuntime": 1000}}, "linux.resources.cpu.realtimeRuntime"),
])
def test_v1_only_settings_are_unsupported_on_v2(cg: Cgroup, resources: dict[str, object], field: str) -> None:
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply(resources)
    assert e.value.field == field


def test_block_io_weight_and_throttles(cg: Cgroup) -> None:
    cg.apply({"blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}})
    assert content(cg, "io.weight") == str(1 + (500 - 10) * 9999 // 990)
    assert content(cg, "io.max") == "8:0 rbps=1048576"
    d = cg.dir(UNIFIED)
    assert d is not None
    (d / "io.bfq.weight").write_text("default 100")
    cg.apply({"blockIO": {"weight": 500}})
    assert content(cg, "io.bfq.weight") == "500"   # BFQ takes the v1 range as is


def test_a_failing_write_restores_the_files_already_written(cg: Cgroup) -> None:
    d = cg.dir(UNIFIED)
    assert d is not None
    (d / "memory.max").unlink()
    (d / "memory.max").mkdir()   # opening it for writing fails (EISDIR) after cpu.* were written
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"cpu": {"shares": 512, "quota": 20000}, "memory": {"limit": 64 * MiB}})
    assert e.value.field == "linux.resources.memory.limit"
    assert content(cg, "cpu.weight") == "100"
    assert content(cg, "cpu.max") == "max 100000"


def test_apply_on_a_cgroup_that_was_not_created_names_the_path(h: Hierarchy) -> None:
    with pytest.raises(Exception) as e:
        h.cgroup("/nope").apply({"pids": {"limit": 3}})
    assert getattr(e.value, "field", None) == "linux.cgroupsPath"


def test_device_rules_on_a_directory_that_is_not_a_cgroup_fail_naming_the_key(cg: Cgroup) -> None:
    # The eBPF filter itself is tested in test_cgroups_devicefilter.py and on the real cgroup2 mount
    # (tests/integration/test_cgroups.py); a fake tree cannot take a BPF attachment.
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"devices": [{"allow": False, "access": "rwm"}]})
    assert e.value.field == "linux.resources.devices"
    assert "eBPF device filter" in str(e.value)


def test_oom_kill_count_reads_memory_events(cg: Cgroup) -> None:
    assert cg.oom_kill_count() == 2


def test_stats_parse_cpu_stat_memory_stat_and_pids(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 128 * MiB}})
    st = cg.stats()
    assert st.cpu_usage_ns == 2_500_000 * 1000
    assert st.memory_usage_bytes == 73400320
    assert st.memory_working_set_bytes == 73400320 - 10485760   # usage - inactive_file, as cadvisor
    assert st.memory_rss_bytes == 52428800                      # anon
    assert st.memory_limit_bytes == 128 * MiB
    assert (st.page_faults, st.major_page_faults) == (40000, 7)
    assert st.pids_current == 3
    assert st.oom_kill_count == 2


def test_stats_of_an_unlimited_cgroup_have_no_limit(cg: Cgroup) -> None:
    assert cg.stats().memory_limit_bytes is None


def test_kill_all_with_sigkill_uses_cgroup_kill(cg: Cgroup) -> None:
    cg.kill_all(signal.SIGKILL)
    assert content(cg, "cgroup.kill") == "1"


def test_freeze_writes_cgroup_freeze_and_waits_for_the_frozen_event(cg: Cgroup) -> None:
    d = cg.dir(UNIFIED)
    assert d is not None
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cg.freeze()
    assert content(cg, "cgroup.freeze") == "1"
    cg.thaw()
    assert content(cg, "cgroup.freeze") == "0"


def test_a_freeze_that_never_completes_is_undone_and_reported(cg: Cgroup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup_module, "FREEZE_TIMEOUT", 0.05)
    with pytest.raises(CgroupBusy):
        cg.freeze()
    assert content(cg, "cgroup.freeze") == "0"


def test_pids_lists_the_cgroup_and_its_descendants(cg: Cgroup) -> None:
    d = cg.dir(UNIFIED)
    assert d is not None
    (d / "cgroup.procs").write_text("10\n11\n")
    populate(d / "nested", **{"cgroup.procs": "12\n"})
    assert cg.pids() == [10, 11, 12]
