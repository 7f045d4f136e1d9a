"""runtime.linux.cgroups on the real cgroup hierarchy of this host (v1 hybrid here).

Every cgroup lives under /cri-shim-test-<test base name>-<random>, so the session leak
check (which matches the test base name) sees anything left behind. Processes are put
into a cgroup the way the pod shim does it: the child writes its own pid into every
cgroup.procs file, then execs (here a shell does that, so no preexec_fn is needed).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.base import InvalidSpec, Unsupported
from runtime.linux.cgroups import (
    UNIFIED,
    DeviceRule,
    Cgroup,
    CgroupError,
    CgroupInvalid,
    CgroupMode,
    CgroupUnsupported,
    Driver,
    Hierarchy,
    cgroup_path,
    current_cgroup,
    open_hierarchy,
)
from runtime.linux.cgroups import devicefilter
from runtime.linux.cgroups.devicefilter import DeviceState
from tests.harness.daemon import TMP_BASE

MiB = 1 << 20
# The shim's child does this itself before exec: join every hierarchy, then become the workload.
ENTER_AND_EXEC = 'for f in $CST_PROCS; do echo 0 > "$f" || exit 97; done; exec "$@"'


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    h = open_hierarchy()
    if h.mode is CgroupMode.NONE:
        pytest.fail("no cgroup filesystem on this host")
    return h


@pytest.fixture
def parent(hierarchy: Hierarchy) -> Iterator[Cgroup]:
    cg = hierarchy.cgroup(f"/cri-shim-test-{TMP_BASE.name}-{secrets.token_hex(4)}")
    cg.create()
    yield cg
    cg.destroy()
    assert not cg.exists()


@pytest.fixture
def cg(hierarchy: Hierarchy, parent: Cgroup) -> Cgroup:
    c = hierarchy.cgroup(cgroup_path(Driver.CGROUPFS, parent.path, "c1"))
    c.create()
    return c


def spawn_in(cg: Cgroup, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CST_PROCS": " ".join(cg.join_files())}
    return subprocess.Popen(["sh", "-c", ENTER_AND_EXEC, "sh", *argv], env=env, **kw)  # type: ignore[call-overload]


def run_in(cg: Cgroup, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CST_PROCS": " ".join(cg.join_files())}
    return subprocess.run(["sh", "-c", ENTER_AND_EXEC, "sh", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def read(cg: Cgroup, controller: str, file: str) -> str:
    d = cg.dir(controller)
    assert d is not None, f"{controller} is not mounted"
    return (d / file).read_text().strip()


def wait_until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---------------------------------------------------------------- create / destroy


def test_create_makes_the_cgroup_in_every_hierarchy_and_destroy_removes_it(hierarchy: Hierarchy,
                                                                           parent: Cgroup) -> None:
    cg = hierarchy.cgroup(parent.path + "/a/b")
    assert not cg.exists()
    cg.create()
    cg.create()   # idempotent
    assert cg.paths(), "no hierarchy found"
    assert cg.dirs() == {name: str(d) for name, d in cg.paths().items()}
    for name, d in cg.paths().items():
        assert d.is_dir(), f"{name}: {d} missing"
        assert (d / "cgroup.procs").exists()
    if "cpuset" in hierarchy.mounts:
        # A new v1 cpuset cgroup is empty; create() fills it from the parent so processes can join.
        assert read(cg, "cpuset", "cpuset.cpus") == read(parent, "cpuset", "cpuset.cpus")
    hierarchy.cgroup(parent.path + "/a").destroy()
    assert not cg.exists()
    assert not hierarchy.cgroup(parent.path + "/a").exists()
    hierarchy.cgroup(parent.path + "/a").destroy()   # idempotent


def test_hybrid_host_places_the_cgroup_in_the_unified_hierarchy_too(hierarchy: Hierarchy, cg: Cgroup) -> None:
    if hierarchy.mode is not CgroupMode.HYBRID:
        pytest.skip("only meaningful on a hybrid host")
    unified = cg.paths()[UNIFIED]
    assert unified.is_dir()
    assert str(unified / "cgroup.procs") in cg.procs_files()


def test_the_root_cgroup_and_unclean_paths_are_refused(hierarchy: Hierarchy) -> None:
    for bad in ("/", "relative/path", "/a/../b", "/a//b"):
        with pytest.raises(CgroupInvalid) as e:
            hierarchy.cgroup(bad)
        assert e.value.field == "linux.cgroupsPath"


def test_a_systemd_scope_path_is_placed_through_the_filesystem(hierarchy: Hierarchy, parent: Cgroup) -> None:
    # Without systemd as PID 1 the systemd driver's cgroup is made through cgroupfs, like runc's fs
    # fallback; nest it under our test parent so it stays identifiable as ours.
    scope = cgroup_path(Driver.SYSTEMD, "kubepods-burstable-pod1234_5678.slice", "abc")
    assert scope == ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/"
                     "cri-shim-abc.scope")
    cg = hierarchy.cgroup(parent.path + scope)
    cg.create()
    cg.apply({"memory": {"limit": 64 * MiB}})
    assert read(cg, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    result = run_in(cg, "cat", "/proc/self/cgroup")
    assert result.returncode == 0, result.stderr
    assert f"memory:{parent.path}{scope}" in result.stdout


# ---------------------------------------------------------------- apply


def test_apply_writes_every_v1_resource_and_the_files_read_back(hierarchy: Hierarchy, cg: Cgroup) -> None:
    cpus = read(cg, "cpuset", "cpuset.cpus")
    first_cpu = cpus.split(",")[0].split("-")[0]
    resources = {
        "cpu": {"shares": 512, "quota": 50000, "period": 200000, "cpus": first_cpu, "mems": "0", "idle": 0},
        "memory": {"limit": 96 * MiB, "swap": 128 * MiB, "reservation": 32 * MiB, "swappiness": 10},
        "pids": {"limit": 42},
        "blockIO": {"weight": 300, "throttleReadBpsDevice": [{"major": 7, "minor": 0, "rate": 1048576}]},
    }
    cg.apply(resources)
    assert read(cg, "cpu", "cpu.shares") == "512"
    assert read(cg, "cpu", "cpu.cfs_quota_us") == "50000"
    assert read(cg, "cpu", "cpu.cfs_period_us") == "200000"
    assert read(cg, "cpuset", "cpuset.cpus") == first_cpu
    assert read(cg, "cpuset", "cpuset.mems") == "0"
    assert read(cg, "memory", "memory.limit_in_bytes") == str(96 * MiB)
    assert read(cg, "memory", "memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert read(cg, "memory", "memory.soft_limit_in_bytes") == str(32 * MiB)
    assert read(cg, "memory", "memory.swappiness") == "10"
    assert read(cg, "pids", "pids.max") == "42"
    weight_file = "blkio.weight" if cg.has_file("blkio", "blkio.weight") else "blkio.bfq.weight"
    assert read(cg, "blkio", weight_file).split()[-1] == "300"
    assert "7:0 1048576" in read(cg, "blkio", "blkio.throttle.read_bps_device")


def test_lowering_memory_below_memsw_and_raising_both_follow_the_kernel_order(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 64 * MiB, "swap": 64 * MiB}})
    # Growing: memsw must go first or the limit would exceed it for a moment (EINVAL).
    cg.apply({"memory": {"limit": 256 * MiB, "swap": 256 * MiB}})
    assert read(cg, "memory", "memory.limit_in_bytes") == str(256 * MiB)
    assert read(cg, "memory", "memory.memsw.limit_in_bytes") == str(256 * MiB)
    cg.apply({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}})
    assert read(cg, "memory", "memory.memsw.limit_in_bytes") == str(32 * MiB)
    cg.apply({"memory": {"limit": -1}})   # unlimited lifts memsw too
    assert int(read(cg, "memory", "memory.limit_in_bytes")) > 1 << 60
    assert int(read(cg, "memory", "memory.memsw.limit_in_bytes")) > 1 << 60


def test_unlimited_values_and_update_of_a_single_field(cg: Cgroup) -> None:
    cg.apply({"cpu": {"quota": 20000, "period": 100000}, "pids": {"limit": 10}})
    cg.apply({"cpu": {"quota": -1}, "pids": {"limit": -1}})
    assert read(cg, "cpu", "cpu.cfs_quota_us") == "-1"
    assert read(cg, "cpu", "cpu.cfs_period_us") == "100000"
    assert read(cg, "pids", "pids.max") == "max"


def test_disable_oom_killer_sets_oom_control(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 64 * MiB, "disableOOMKiller": True}})
    assert "oom_kill_disable 1" in read(cg, "memory", "memory.oom_control")


def test_hugepage_limits_are_applied_where_the_host_has_hugetlb(hierarchy: Hierarchy, cg: Cgroup) -> None:
    if not hierarchy.has("hugetlb"):
        with pytest.raises(CgroupUnsupported) as e:
            cg.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})
        assert e.value.field.startswith("linux.resources.hugepageLimits[0]")
        return
    cg.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]})
    if hierarchy.hierarchy_of("hugetlb") == UNIFIED:
        # This hybrid host has hugetlb only in the cgroup2 mount: the v2 file names apply there.
        assert read(cg, "hugetlb", "hugetlb.2MB.max") == str(4 * MiB)
    else:
        assert read(cg, "hugetlb", "hugetlb.2MB.limit_in_bytes") == str(4 * MiB)
    with pytest.raises(CgroupUnsupported) as e2:
        cg.apply({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]})
    assert e2.value.field == "linux.resources.hugepageLimits[0].pageSize"


@pytest.mark.parametrize(("resources", "field"), [
    ({"memory": {"limit": "64M"}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": -5}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": 64 * MiB, "swap": 32 * MiB}}, "linux.resources.memory.swap"),
    ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
    ({"cpu": {"shares": 1}}, "linux.resources.cpu.shares"),
    ({"cpu": {"quota": 10}}, "linux.resources.cpu.quota"),
    ({"cpu": {"period": 5_000_000}}, "linux.resources.cpu.period"),
    ({"cpu": {"cpus": "0-x"}}, "linux.resources.cpu.cpus"),
    ({"cpu": {"cpus": "3-1"}}, "linux.resources.cpu.cpus"),
    ({"pids": {"limit": True}}, "linux.resources.pids.limit"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 0}]}, "linux.resources.hugepageLimits[0].pageSize"),
    ({"devices": [{"allow": True, "type": "x"}]}, "linux.resources.devices[0].type"),
    ({"devices": [{"allow": True, "type": "c", "access": "rwx"}]}, "linux.resources.devices[0].access"),
    ({"devices": [{"allow": "yes"}]}, "linux.resources.devices[0].allow"),
    ({"cpu": {"sharez": 2}}, "linux.resources.cpu.sharez"),
    ({"memroy": {}}, "linux.resources.memroy"),
])
def test_invalid_resources_are_rejected_naming_the_key_and_nothing_is_written(
        cg: Cgroup, resources: dict[str, object], field: str) -> None:
    before = {f: read(cg, c, f) for c, f in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.shares"),
                                             ("devices", "devices.list"))}
    with pytest.raises(CgroupInvalid) as e:
        cg.apply({"cpu": {"shares": 300}, **resources})
    assert e.value.field == field
    assert str(e.value).startswith(field + ": ")
    assert isinstance(e.value, InvalidSpec)
    after = {f: read(cg, c, f) for c, f in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.shares"),
                                            ("devices", "devices.list"))}
    assert after == before


def test_unified_keys_need_a_v2_host(hierarchy: Hierarchy, cg: Cgroup) -> None:
    if hierarchy.mode is CgroupMode.V2:
        pytest.skip("v2 host")
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"unified": {"memory.oom.group": "1"}})
    assert e.value.field == "linux.resources.unified[memory.oom.group]"
    assert isinstance(e.value, Unsupported)


def test_a_cpu_the_host_lacks_is_refused_and_earlier_writes_are_undone(cg: Cgroup) -> None:
    missing_cpu = str(os.cpu_count())   # CPUs are numbered from 0
    shares, cpus = read(cg, "cpu", "cpu.shares"), read(cg, "cpuset", "cpuset.cpus")
    with pytest.raises(CgroupUnsupported) as e:
        cg.apply({"cpu": {"shares": 512, "quota": 30000, "cpus": missing_cpu}})
    assert e.value.field == "linux.resources.cpu.cpus"
    assert f"cpuset.cpus to '{missing_cpu}'" in str(e.value)
    assert read(cg, "cpu", "cpu.shares") == shares, "cpu.shares was left half-applied"
    assert read(cg, "cpu", "cpu.cfs_quota_us") == "-1"
    assert read(cg, "cpuset", "cpuset.cpus") == cpus


def test_a_memory_limit_below_what_is_in_use_is_refused_with_the_usage(cg: Cgroup) -> None:
    proc = spawn_in(cg, sys.executable, "-c",
                    "import sys,time; b=bytearray(40<<20); sys.stdout.write('ok\\n'); sys.stdout.flush(); "
                    "time.sleep(60)", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
        cg.apply({"pids": {"limit": 5}})
        with pytest.raises(CgroupUnsupported) as e:
            cg.apply({"pids": {"limit": 7}, "memory": {"limit": 4 * MiB, "swap": 4 * MiB}})
        assert e.value.field == "linux.resources.memory.limit"
        assert "current usage" in str(e.value)
        assert read(cg, "pids", "pids.max") == "5", "pids.max was left half-applied"
        assert proc.poll() is None, "refusing the limit must not kill the process"
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- devices


def test_device_rules_default_deny_with_the_standard_set(cg: Cgroup) -> None:
    cg.apply({"devices": [{"allow": False, "access": "rwm"},
                          {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"}]})
    listed = read(cg, "devices", "devices.list").splitlines()
    assert "a *:* rwm" not in listed
    for rule in ("c 1:3 rwm", "c 1:5 rwm", "c 136:* rwm", "c 5:2 rwm", "c 1:11 r"):
        assert rule in listed
    # Enforced by the kernel: /dev/null opens, /dev/kmsg only for reading, /dev/mem not at all.
    result = run_in(cg, "sh", "-c", "exec 3</dev/kmsg && echo read-ok; exec 4>/dev/null && echo null-ok; "
                    "(exec 5>/dev/kmsg) 2>/dev/null || echo write-denied; "
                    "(exec 6</dev/mem) 2>/dev/null || echo mem-denied")
    assert result.stdout.split() == ["read-ok", "null-ok", "write-denied", "mem-denied"], result.stderr


def test_a_device_the_parent_denies_is_refused_and_the_list_restored(hierarchy: Hierarchy, cg: Cgroup) -> None:
    cg.apply({"devices": [{"allow": False, "access": "rwm"}]})
    child = hierarchy.cgroup(cg.path + "/child")
    child.create()
    before = read(child, "devices", "devices.list")
    # c 1:11 (/dev/kmsg) is not allowed in the parent: the kernel refuses it mid-way (EPERM),
    # after "deny all" was already written, so the old list must be put back.
    with pytest.raises(CgroupUnsupported) as e:
        child.apply({"devices": [{"allow": False, "access": "rwm"},
                                 {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rwm"}]})
    assert e.value.field == "linux.resources.devices[1]"
    assert "parent cgroup does not allow" in str(e.value)
    assert read(child, "devices", "devices.list") == before
    # "all devices" cannot change while a child cgroup exists: a new device list is refused on its
    # first write ("deny all") ...
    with pytest.raises(CgroupUnsupported) as e2:
        cg.apply({"devices": [{"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"}]})
    assert e2.value.field == "linux.resources.devices"
    # ... while re-applying the same list writes nothing (no moment without /dev/null on an update).
    cg.apply({"devices": [{"allow": False, "access": "rwm"}]})
    child.destroy()


# ---------------------------------------------------------------- processes


def test_a_moved_process_is_listed_and_kill_all_kills_it_and_its_children(cg: Cgroup) -> None:
    proc = subprocess.Popen(["sleep", "100"])
    try:
        cg.add_process(proc.pid)
        assert cg.pids() == [proc.pid]
        assert str(proc.pid) in (Path(cg.procs_files()[0])).read_text().split()
        assert current_cgroup(proc.pid)["memory"] == cg.path
        forker = spawn_in(cg, "sh", "-c", "sleep 100 & sleep 100 & wait")
        wait_until(lambda: len(cg.pids()) == 4)
        cg.kill_all()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert forker.wait(timeout=5) == -signal.SIGKILL
        wait_until(lambda: cg.pids() == [])
    finally:
        proc.kill()
        proc.wait()


def test_kill_all_with_sigterm_signals_every_process_without_freezing(cg: Cgroup) -> None:
    procs = [spawn_in(cg, "sleep", "100") for _ in range(3)]
    wait_until(lambda: len(cg.pids()) == 3)
    cg.kill_all(signal.SIGTERM)
    assert [p.wait(timeout=5) for p in procs] == [-signal.SIGTERM] * 3
    if cg.dir("freezer") is not None:
        assert read(cg, "freezer", "freezer.state") == "THAWED"


def test_freeze_stops_the_processes_and_thaw_resumes_them(cg: Cgroup) -> None:
    proc = spawn_in(cg, sys.executable, "-c", "while True: pass")
    try:
        wait_until(lambda: len(cg.pids()) == 1)
        cg.freeze()
        if cg.dir("freezer") is not None:
            assert read(cg, "freezer", "freezer.state") == "FROZEN"
        ticks = lambda: int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[11])  # noqa: E731
        frozen_at = ticks()
        time.sleep(0.3)
        assert ticks() == frozen_at, "a frozen process kept running"
        cg.thaw()
        wait_until(lambda: ticks() > frozen_at)
    finally:
        cg.thaw()
        proc.kill()
        proc.wait()


def test_destroy_kills_what_is_left_and_is_idempotent(hierarchy: Hierarchy, parent: Cgroup) -> None:
    cg = hierarchy.cgroup(parent.path + "/busy")
    cg.create()
    proc = spawn_in(cg, "sh", "-c", "sleep 100 & exec sleep 100")
    wait_until(lambda: len(cg.pids()) == 2)
    # The background sleep is not our child (init reaps it); destroy() kills it and waits for it to leave.
    cg.destroy(timeout=10)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not cg.exists()
    cg.destroy()


def test_add_process_of_a_pid_that_does_not_exist_names_the_cgroup_path(cg: Cgroup) -> None:
    with pytest.raises(CgroupError) as e:
        cg.add_process(2 ** 22 + 12345)
    assert e.value.field == "linux.cgroupsPath"


# ---------------------------------------------------------------- OOM and stats


def test_a_process_past_the_memory_limit_is_oom_killed_and_counted(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 50 * MiB, "swap": 50 * MiB}})
    assert cg.oom_kill_count() == 0
    result = run_in(cg, sys.executable, "-c", "b = bytearray(200 << 20)")
    assert result.returncode == -signal.SIGKILL or result.returncode == 128 + signal.SIGKILL, result
    assert cg.oom_kill_count() == 1
    assert cg.stats().oom_kill_count == 1


def test_stats_report_the_usage_of_a_running_process(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 256 * MiB}})
    proc = spawn_in(cg, sys.executable, "-c",
                    "import sys,time\nb=bytearray(30<<20)\nt=time.process_time()\n"
                    "while time.process_time()-t < 0.2: pass\nsys.stdout.write('ok\\n'); sys.stdout.flush()\n"
                    "time.sleep(60)", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
        st = cg.stats()
        assert abs(st.timestamp_ns - time.time_ns()) < 5 * 10**9
        assert st.cpu_usage_ns is not None and st.cpu_usage_ns > 100_000_000
        assert st.memory_usage_bytes is not None and st.memory_usage_bytes > 30 * MiB
        assert st.memory_working_set_bytes is not None and 30 * MiB < st.memory_working_set_bytes \
            <= st.memory_usage_bytes
        assert st.memory_rss_bytes is not None and st.memory_rss_bytes > 25 * MiB
        assert st.memory_limit_bytes == 256 * MiB
        assert st.page_faults is not None and st.page_faults > 1000
        assert st.major_page_faults is not None
        assert st.pids_current == 1
        assert st.oom_kill_count == 0
    finally:
        proc.kill()
        proc.wait()


def test_stats_of_an_unlimited_cgroup_report_no_limit(cg: Cgroup) -> None:
    assert cg.stats().memory_limit_bytes is None


# ---------------------------------------------------------------- device rule model vs the v1 kernel


@pytest.mark.parametrize("seed", range(12))
def test_the_device_rule_model_matches_the_v1_kernel(hierarchy: Hierarchy, parent: Cgroup, seed: int) -> None:
    # DeviceState is what the v2 eBPF program encodes; the v1 kernel is the reference for it.
    rng = random.Random(seed)
    accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"]
    rules = [DeviceRule(allow=False)] if seed % 3 else []
    for _ in range(rng.randint(1, 10)):
        rules.append(DeviceRule(allow=rng.random() < 0.6, type=rng.choice("abcc"),
                                major=rng.choice([-1, 1, 5, 136]), minor=rng.choice([-1, 3, 5]),
                                access=rng.choice(accesses)))
    cg = hierarchy.cgroup(f"{parent.path}/model{seed}")
    cg.create()
    d = cg.dir("devices")
    assert d is not None
    for rule in rules:
        (d / ("devices.allow" if rule.allow else "devices.deny")).write_text(rule.v1_line())
    assert sorted((d / "devices.list").read_text().split("\n")[:-1]) == DeviceState.of(rules).v1_list(), rules


# ---------------------------------------------------------------- the v2 code paths on this host's cgroup2 mount


@pytest.fixture
def v2() -> Iterator[Cgroup]:
    """A cgroup driven in v2 mode on the cgroup2 mount of this hybrid host.

    That mount has no cpu/memory/pids controllers here (v1 holds them), but the v2 core
    (cgroup.kill, cgroup.freeze, cgroup.events), eBPF device filtering and hugetlb are real.
    """
    mount = Path("/sys/fs/cgroup/unified")
    if not (mount / "cgroup.controllers").exists():
        pytest.skip("no cgroup2 mount beside v1 on this host")
    h = open_hierarchy(mount)
    assert h.mode is CgroupMode.V2
    top = h.cgroup(f"/cri-shim-test-{TMP_BASE.name}-{secrets.token_hex(4)}")
    c = h.cgroup(top.path + "/c1")
    c.create()
    yield c
    top.destroy()
    assert not top.exists()


def test_v2_ebpf_device_filter_is_enforced_by_the_kernel(v2: Cgroup) -> None:
    v2.apply({"devices": [{"allow": False, "access": "rwm"},
                          {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"}]})
    result = run_in(v2, "sh", "-c", "exec 3</dev/kmsg && echo read-ok; exec 4>/dev/null && echo null-ok; "
                    "(exec 5>/dev/kmsg) 2>/dev/null || echo write-denied; "
                    "(exec 6</dev/mem) 2>/dev/null || echo mem-denied")
    assert result.stdout.split() == ["read-ok", "null-ok", "write-denied", "mem-denied"], result.stderr
    # An update replaces the program rather than stacking another one on top of it.
    fd = os.open(v2.paths()[UNIFIED], os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = devicefilter.query_programs(fd)
        v2.apply({"devices": [{"allow": False, "access": "rwm"}]})
        after = devicefilter.query_programs(fd)
    finally:
        os.close(fd)
    assert len(before) == len(after) == 1 and before != after
    result = run_in(v2, "sh", "-c", "(exec 3</dev/kmsg) 2>/dev/null || echo read-denied")
    assert result.stdout.split() == ["read-denied"]


def test_v2_hugetlb_limits_are_written_where_the_kernel_has_them(v2: Cgroup) -> None:
    if not v2.hierarchy.has("hugetlb"):
        pytest.skip("no hugetlb controller on the cgroup2 mount")
    v2.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}]})
    assert read(v2, "hugetlb", "hugetlb.2MB.max") == str(2 * MiB)


def test_v2_pids_freeze_thaw_and_cgroup_kill(v2: Cgroup) -> None:
    proc = spawn_in(v2, sys.executable, "-c", "while True: pass")
    forker = spawn_in(v2, "sh", "-c", "sleep 100 & sleep 100 & wait")
    try:
        wait_until(lambda: len(v2.pids()) == 4)
        v2.freeze()
        assert "frozen 1" in read(v2, UNIFIED, "cgroup.events")
        ticks = lambda: int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[11])  # noqa: E731
        frozen_at = ticks()
        time.sleep(0.3)
        assert ticks() == frozen_at, "a frozen process kept running"
        v2.thaw()
        wait_until(lambda: ticks() > frozen_at)
        v2.kill_all()   # cgroup.kill: the whole tree, atomically
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert forker.wait(timeout=5) == -signal.SIGKILL
        wait_until(lambda: v2.pids() == [])
    finally:
        v2.thaw()
        proc.kill()
        forker.kill()
        proc.wait()
        forker.wait()


def test_v2_destroy_kills_what_is_left(v2: Cgroup) -> None:
    proc = spawn_in(v2, "sh", "-c", "sleep 100 & exec sleep 100")
    wait_until(lambda: len(v2.pids()) == 2)
    v2.destroy(timeout=10)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not v2.exists()
