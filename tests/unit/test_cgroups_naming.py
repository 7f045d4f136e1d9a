"""cgroup paths for the cgroupfs and systemd drivers, resource parsing, and v1/v2 conversions.

Expected values come from upstream tests, cited per test: kubelet's
pkg/kubelet/cm/cgroup_manager_linux_test.go, runc's systemd ExpandSlice and
specconv ("slice:prefix:name"), containerd's getCgroupsPath, and opencontainers/cgroups
utils_test.go (TestConvertCPUSharesToCgroupV2Value, TestConvertMemorySwapToCgroupV2Value).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.linux.cgroups import (
    CgroupInvalid,
    CgroupUnsupported,
    Driver,
    cgroup_path,
    current_cgroup,
    expand_slice,
    slice_for,
)
from runtime.linux.cgroups import plan, resources
from runtime.linux.cgroups.devices import DEFAULT_DEVICE_RULES, DeviceRule, effective_rules, parse_rules
from runtime.linux.cgroups.hierarchy import open_hierarchy


# ---------------------------------------------------------------- cgroupfs

def test_cgroupfs_path_joins_parent_and_name() -> None:
    assert cgroup_path(Driver.CGROUPFS, "/kubepods/burstable/pod1234-5678", "abc") == \
        "/kubepods/burstable/pod1234-5678/abc"
    assert cgroup_path("cgroupfs", "/kubepods/", "abc") == "/kubepods/abc"
    assert cgroup_path(Driver.CGROUPFS, "/", "abc") == "/abc"


@pytest.mark.parametrize("parent", ["", "kubepods", "/a/../b", "/a//b"])
def test_cgroupfs_parents_that_are_not_clean_absolute_paths_are_refused(parent: str) -> None:
    with pytest.raises(CgroupInvalid) as e:
        cgroup_path(Driver.CGROUPFS, parent, "abc")
    assert e.value.field == "cgroup_parent"


def test_a_systemd_slice_given_to_the_cgroupfs_driver_explains_the_driver_mismatch() -> None:
    # containerd#4857 / #7276: the most common cgroup misconfiguration; say how to fix it.
    with pytest.raises(CgroupInvalid) as e:
        cgroup_path(Driver.CGROUPFS, "kubepods-burstable-pod12.slice", "abc")
    assert e.value.field == "cgroup_parent"
    assert "cgroup driver is cgroupfs" in str(e.value) and "systemd" in str(e.value)


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(CgroupInvalid):
        cgroup_path(Driver.CGROUPFS, "/kubepods", name)


def test_an_unknown_driver_is_refused() -> None:
    with pytest.raises(CgroupInvalid) as e:
        cgroup_path("cgroupv3", "/kubepods", "abc")
    assert e.value.field == "cgroup_driver"


# ---------------------------------------------------------------- systemd

@pytest.mark.parametrize(("components", "expected"), [
    # kubelet TestCgroupNameToSystemdBasename
    (["system"], "system.slice"),
    (["system", "Burstable"], "system-Burstable.slice"),
    (["Burstable", "pod-123"], "Burstable-pod_123.slice"),
    (["test", "a", "b"], "test-a-b.slice"),
    (["test", "a", "b", "Burstable"], "test-a-b-Burstable.slice"),
    (["Burstable"], "Burstable.slice"),
    (["BestEffort", "pod-6c1a4e95-6bb6-11e6-bc26-28d2444e470d"],
     "BestEffort-pod_6c1a4e95_6bb6_11e6_bc26_28d2444e470d.slice"),
])
def test_slice_names_match_kubelet(components: list[str], expected: str) -> None:
    assert slice_for(components) == expected


@pytest.mark.parametrize(("slice_name", "expected"), [
    # kubelet TestCgroupNameToSystemd (ToSystemd = ExpandSlice of the basename)
    ("Burstable.slice", "/Burstable.slice"),
    ("Burstable-pod_123.slice", "/Burstable.slice/Burstable-pod_123.slice"),
    ("BestEffort-pod_6c1a4e95_6bb6_11e6_bc26_28d2444e470d.slice",
     "/BestEffort.slice/BestEffort-pod_6c1a4e95_6bb6_11e6_bc26_28d2444e470d.slice"),
    ("kubepods.slice", "/kubepods.slice"),
    # runc ExpandSlice
    ("test-a-b.slice", "/test.slice/test-a.slice/test-a-b.slice"),
    ("-.slice", "/"),
])
def test_expand_slice_matches_runc_and_kubelet(slice_name: str, expected: str) -> None:
    assert expand_slice(slice_name) == expected


@pytest.mark.parametrize("bad", [".slice", "test", "test-.slice", "-test.slice", "test--a.slice", "a/b.slice",
                                 "has space.slice"])
def test_invalid_slice_names_are_refused(bad: str) -> None:
    with pytest.raises(CgroupInvalid) as e:
        expand_slice(bad)
    assert e.value.field == "cgroup_parent"


def test_systemd_scope_path_of_a_container_in_a_pod_slice() -> None:
    expected = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-shim-abc.scope"
    # kubelet sends the bare slice name (cgroupsPerQOS off) or the expanded path (CgroupName.ToSystemd);
    # containerd keeps only the last component (getCgroupsPath), and so do we.
    assert cgroup_path(Driver.SYSTEMD, "kubepods-burstable-pod1234_5678.slice", "abc") == expected
    assert cgroup_path(Driver.SYSTEMD, "/kubepods.slice/kubepods-burstable.slice/"
                       "kubepods-burstable-pod1234_5678.slice", "abc") == expected


def test_systemd_slice_prefix_name_form_as_runc_takes_it() -> None:
    # runc --systemd-cgroup: cgroupsPath "system.slice:runc:434234" (runc main.go usage text).
    assert cgroup_path(Driver.SYSTEMD, "system.slice:runc:434234", "") == "/system.slice/runc-434234.scope"
    # containerd: "<pod slice>:cri-containerd:<id>"
    assert cgroup_path(Driver.SYSTEMD, "kubepods-besteffort-pod1.slice:cri-containerd:abc", "abc") == \
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
    # An empty slice means runc's default, system.slice.
    assert cgroup_path(Driver.SYSTEMD, ":docker:1234", "") == "/system.slice/docker-1234.scope"


def test_a_name_ending_in_slice_is_a_sub_slice_not_a_scope() -> None:
    # runc getUnitName: a Name ending in .slice is created as that slice.
    assert cgroup_path(Driver.SYSTEMD, "kubepods.slice", "kubepods-burstable.slice") == \
        "/kubepods.slice/kubepods-burstable.slice"


def test_an_empty_systemd_parent_uses_system_slice() -> None:
    assert cgroup_path(Driver.SYSTEMD, "", "abc") == "/system.slice/cri-shim-abc.scope"


@pytest.mark.parametrize("parent", ["/kubepods/burstable/pod12", "a:b", "x.slice:p:n:extra"])
def test_systemd_parents_in_the_wrong_form_are_refused(parent: str) -> None:
    with pytest.raises(CgroupInvalid) as e:
        cgroup_path(Driver.SYSTEMD, parent, "abc")
    assert e.value.field == "cgroup_parent"


def test_an_expanded_path_that_does_not_match_its_slice_is_refused() -> None:
    with pytest.raises(CgroupInvalid) as e:
        cgroup_path(Driver.SYSTEMD, "/other.slice/kubepods-burstable.slice", "abc")
    assert "/kubepods.slice/kubepods-burstable.slice" in str(e.value)


def test_a_cgroupfs_path_given_to_the_systemd_driver_explains_the_mismatch() -> None:
    with pytest.raises(CgroupInvalid) as e:
        cgroup_path(Driver.SYSTEMD, "/kubepods/burstable/pod12", "abc")
    assert "cgroup driver is systemd" in str(e.value)


# ---------------------------------------------------------------- conversions

@pytest.mark.parametrize(("shares", "weight"), [(1, 1), (2, 1), (3, 2), (1024, 100), (262143, 10000),
                                                (262144, 10000), (262145, 10000)])
def test_shares_to_weight_matches_runc(shares: int, weight: int) -> None:
    assert plan.shares_to_weight(shares) == weight


@pytest.mark.parametrize(("swap", "memory", "expected"), [
    (None, None, None), (-1, None, -1), (300, -1, 300), (-1, -1, -1), (-1, 1000, -1),
    (1000, 1000, 0), (500, 200, 300), (None, -1, -1),
])
def test_swap_conversion_matches_runc(swap: int | None, memory: int | None, expected: int | None) -> None:
    assert plan.swap_to_v2(swap, memory) == expected


def test_blkio_weight_to_io_weight_is_linear_over_the_ranges() -> None:
    assert plan.blkio_weight_to_io_weight(10) == 1
    assert plan.blkio_weight_to_io_weight(1000) == 10000


# ---------------------------------------------------------------- parsing

def test_parse_keeps_unset_fields_none_and_treats_zero_as_unset() -> None:
    r = resources.parse({"cpu": {"shares": 0, "quota": 0}, "memory": {"limit": 0}})
    assert r.cpu.shares is None and r.cpu.quota is None and r.memory.limit is None
    assert resources.parse(None) == resources.Resources()
    assert resources.parse({}).devices is None


def test_parse_ignores_deprecated_kernel_memory() -> None:
    assert resources.parse({"memory": {"kernel": 1 << 20, "kernelTCP": 1 << 20}}).memory.limit is None


def test_swappiness_minus_one_and_its_uint64_spelling_mean_unset() -> None:
    assert resources.parse({"memory": {"swappiness": -1}}).memory.swappiness is None
    assert resources.parse({"memory": {"swappiness": (1 << 64) - 1}}).memory.swappiness is None


@pytest.mark.parametrize(("spec", "field"), [
    ({"network": {"classID": 5}}, "linux.resources.network"),
    ({"rdma": {"mlx": {"hcaHandles": 1}}}, "linux.resources.rdma"),
    ({"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 10}]}}, "linux.resources.blockIO.weightDevice"),
])
def test_controllers_we_do_not_support_are_refused_when_asked_for(spec: dict[str, object], field: str) -> None:
    with pytest.raises(CgroupUnsupported) as e:
        resources.parse(spec)
    assert e.value.field == field


def test_empty_unsupported_sections_are_accepted() -> None:
    resources.parse({"network": {}, "rdma": {}, "blockIO": {}})


def test_resources_must_be_an_object() -> None:
    with pytest.raises(CgroupInvalid) as e:
        resources.parse([1, 2])  # type: ignore[arg-type]
    assert e.value.field == "linux.resources"


# ---------------------------------------------------------------- devices

def test_device_rules_normalise_to_v1_lines() -> None:
    rules = parse_rules([{"allow": False, "access": "rwm"},
                         {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "wr"},
                         {"allow": True, "type": "b", "major": 8, "access": "m"},
                         {"allow": True, "type": "c", "major": 136, "minor": -1}])
    assert [r.v1_line() for r in rules] == ["a", "c 1:3 rw", "b 8:* m", "c 136:* rwm"]
    assert rules[0] == DeviceRule(allow=False)


def test_the_default_device_set_is_runcs() -> None:
    lines = {r.v1_line() for r in DEFAULT_DEVICE_RULES}
    assert lines == {"c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm", "c 1:5 rwm",
                     "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm"}
    assert all(r.allow for r in DEFAULT_DEVICE_RULES)


def test_effective_rules_start_from_deny_all_and_end_with_the_defaults() -> None:
    spec = parse_rules([{"allow": True, "type": "c", "major": 4, "minor": 1}])
    eff = effective_rules(spec)
    assert eff[0] == DeviceRule(allow=False)
    assert eff[1] == spec[0]
    assert eff[2:] == DEFAULT_DEVICE_RULES


# ---------------------------------------------------------------- hierarchy discovery and /proc

def test_a_v1_tree_with_co_mounted_and_named_hierarchies_is_understood(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for name in ("cpu,cpuacct", "memory", "pids", "systemd"):
        (root / name).mkdir(parents=True)
        (root / name / "cgroup.procs").write_text("")
    (root / "cpu").symlink_to(root / "cpu,cpuacct")
    h = open_hierarchy(root)
    assert set(h.mounts) == {"cpu,cpuacct", "memory", "pids", "systemd"}
    assert h.hierarchy_of("cpuacct") == "cpu,cpuacct"
    assert h.hierarchy_of("systemd") is None
    cg = h.cgroup("/a/b")
    assert cg.dir("cpu") == root / "cpu,cpuacct" / "a" / "b"
    assert cg.dirs()["systemd"] == str(root / "systemd" / "a" / "b")
    assert cg.join_files() == [str(root / n / "a" / "b" / "tasks") for n in ("cpu,cpuacct", "memory", "pids",
                                                                          "systemd")]
    assert cg.v2_dir() is None      # pure v1: no clone3 into a cgroup, the child writes every file


def test_a_hybrid_tree_lets_a_child_start_in_v2_and_join_the_v1_hierarchies(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for name in ("memory", "pids", "unified"):
        (root / name).mkdir(parents=True)
        (root / name / "cgroup.procs").write_text("")
    cg = open_hierarchy(root).cgroup("/a/b")
    assert cg.v2_dir() == root / "unified" / "a" / "b"
    assert set(cg.join_files()) == {str(root / "memory/a/b/tasks"), str(root / "pids/a/b/tasks"),
                                    str(root / "unified/a/b/cgroup.procs")}
    assert set(cg.join_files(started_in_v2=True)) == {str(root / "memory/a/b/tasks"), str(root / "pids/a/b/tasks")}


def test_current_cgroup_parses_proc_self_cgroup() -> None:
    mine = current_cgroup()
    text = Path("/proc/self/cgroup").read_text()
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        key = controllers.split(",")[0] if controllers else ""
        assert mine[key] == path
