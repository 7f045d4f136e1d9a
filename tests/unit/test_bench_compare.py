"""The pure parts of bench.compare: percentiles, ratios, tables, critest output parsing, process accounting."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench.compare import context, procs, profile, stats, w_critest
from bench.compare.stats import CONTAINERD, SHIM, Dist, Figure, WorkloadResult
from bench.compare.targets import Unavailable


def test_percentile_is_nearest_rank_and_never_interpolates() -> None:
    samples = [float(x) for x in range(1, 101)]          # 1..100
    assert stats.percentile(samples, 50) == 50
    assert stats.percentile(samples, 90) == 90
    assert stats.percentile(samples, 99) == 99
    assert stats.percentile(samples, 100) == 100
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert stats.percentile([5.0, 1.0], 99) == 5.0        # p99 of few samples is the maximum
    assert stats.percentile([7.0], 1) == 7.0


def test_percentile_refuses_no_samples_and_bad_p() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 0)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_dist_summary_is_in_milliseconds() -> None:
    s = Dist.of([0.001, 0.002, 0.003, 0.004]).summary()
    assert s["n"] == 4
    assert s["p50_ms"] == pytest.approx(2.0)
    assert s["p99_ms"] == pytest.approx(4.0)
    assert s["mean_ms"] == pytest.approx(2.5)
    assert Dist.of([]).summary() == {"n": 0}


def test_ratio_is_shim_over_containerd_and_absent_without_both() -> None:
    assert Figure("x", "ms", {SHIM: 3.0, CONTAINERD: 6.0}).ratio == 0.5
    assert Figure("x", "ms", {SHIM: 3.0, CONTAINERD: None}).ratio is None
    assert Figure("x", "ms", {SHIM: None, CONTAINERD: 2.0}).ratio is None
    assert Figure("x", "ms", {SHIM: 1.0, CONTAINERD: 0.0}).ratio is None


def test_latency_figures_leave_a_runtime_without_samples_empty() -> None:
    figs = stats.latency_figures("start", {SHIM: Dist.of([0.01, 0.02]), CONTAINERD: Dist.of([])}, (50, 99))
    assert [f.name for f in figs] == ["start p50", "start p99"]
    assert figs[0].values == {SHIM: pytest.approx(10.0), CONTAINERD: None}
    assert figs[1].values[SHIM] == pytest.approx(20.0)


def test_table_shows_values_ratio_status_and_notes() -> None:
    r = WorkloadResult("w", "a workload", [Figure("start p50", "ms", {SHIM: 40.0, CONTAINERD: 100.0})],
                       status={SHIM: "ok", CONTAINERD: "could not run: containerd is not installed"},
                       notes=["one note"])
    text = stats.table(r)
    assert text.splitlines()[0] == "== a workload"
    row = next(line for line in text.splitlines() if line.startswith("start p50 [ms]"))
    assert row.split()[-3:] == ["40.00", "100.0", "0.40x"]
    assert "containerd: could not run: containerd is not installed" in text
    assert "cri-shim:" not in text                 # a runtime that succeeded gets no status line
    assert "note: one note" in text
    assert not r.failed
    r.status[SHIM] = "failed: UNKNOWN: boom"
    assert r.failed


def test_critest_params_name_the_mirrored_images_and_counts() -> None:
    text = w_critest.params_yaml(3, 4, 5)
    assert "containersNumber: 3\n" in text and "podsNumber: 4\n" in text and "imagesNumber: 5\n" in text
    assert f"imagePullingBenchmarkImage: {w_critest.PULL_IMAGE}" in text
    assert all(f"  - {i}" in text for i in w_critest.LISTING_IMAGES)


def test_critest_output_files_are_pooled_per_operation(tmp_path: Path) -> None:
    (tmp_path / "pod_benchmark_data.json").write_text(json.dumps({
        "operationsNames": ["CreatePod", "StatusPod"], "numParallel": 1,
        "datapoints": [{"sampleIndex": 0, "operationsDurationsNs": [2_000_000, 1_000_000]},
                       {"sampleIndex": 1, "operationsDurationsNs": [4_000_000, 3_000_000]}]}))
    out = w_critest.parse_output(tmp_path)
    assert out == {"pod/CreatePod": [0.002, 0.004], "pod/StatusPod": [0.001, 0.003]}


def test_critest_report_gives_spec_states_and_the_from_scratch_durations(tmp_path: Path) -> None:
    experiment = {"Name": "start-container-benchmark", "Measurements": [{"Durations": [350_000_000]}]}
    report = [{"SpecReports": [
        {"LeafNodeType": "It", "LeafNodeText": "benchmark about start a container from scratch", "State": "passed",
         "ReportEntries": [{"Name": "start-container-benchmark", "Value": {"AsJSON": json.dumps(experiment)}}]},
        {"LeafNodeType": "It", "LeafNodeText": "benchmark about listing Image", "State": "failed"},
        {"LeafNodeType": "BeforeSuite", "LeafNodeText": "", "State": "passed"}]}]
    (tmp_path / "r.json").write_text(json.dumps(report))
    states, scratch = w_critest.parse_report(tmp_path / "r.json")
    assert states == {"benchmark about start a container from scratch": "passed",
                      "benchmark about listing Image": "failed"}
    assert scratch == [0.35]


def test_own_process_is_measurable() -> None:
    me = os.getpid()
    assert procs.pss_kib(me) > 0
    assert procs.cpu_seconds(me) > 0
    assert procs.start_time(me) > 0
    assert procs.parent_map()[me] == os.getppid()
    assert procs.pss_kib(2 ** 22 + 1) == 0 and procs.cpu_seconds(2 ** 22 + 1) == 0.0   # no such process


def test_runtime_processes_follow_markers_and_descendants_but_skip_workload_cgroups() -> None:
    me = os.getpid()
    # This process has a cgroup; naming its leaf as a workload container excludes it, naming nothing keeps it.
    assert me in procs.runtime_processes([me], [], set())
    assert me not in procs.runtime_processes([me], [], {procs.cgroup_leaf(me)})
    assert procs.runtime_processes([], ["/no/such/marker/dir/"], set()) == []


def test_profile_overrides_change_only_the_named_fields_and_refuse_unknown_ones() -> None:
    p = profile.with_overrides(profile.FULL, ["density_sizes=110", "idle_window=2.5", "podstart_pods=20"])
    assert (p.density_sizes, p.idle_window, p.podstart_pods) == ((110,), 2.5, 20)
    assert p.pull_rounds == profile.FULL.pull_rounds and p.name == "full"
    for bad in ("nosuchfield=1", "podstart_pods", "podstart_pods=many", "name=x"):
        with pytest.raises(ValueError, match="--set"):
            profile.with_overrides(profile.FULL, [bad])


def test_full_profile_fits_the_brief() -> None:
    p = profile.FULL
    assert p.podstart_pods == 200 and p.density_sizes == (110, 500) and p.restart_pods == 110
    assert p.churn_fraction == 0.2 and p.pull_layer_mb * 5 == 200
    assert p.restart_pods in p.density_sizes and profile.SMOKE.restart_pods in profile.SMOKE.density_sizes


class _Target:
    def __init__(self, name: str) -> None:
        self.name = name


def _ctx(available: dict[str, str]) -> context.Context:
    targets: dict[str, Any] = {r: _Target(r) for r in stats.RUNTIMES}
    return context.Context(targets, profile.SMOKE, Path("/nonexistent"), "127.0.0.1:1", Path("/nonexistent"),
                           available)


def test_rounds_alternate_the_runtimes_a_b_a_b() -> None:
    ctx = _ctx({SHIM: "ok", CONTAINERD: "ok"})
    result = ctx.new_result("w", "w")
    order: list[tuple[str, int]] = []
    context.interleave(ctx, result, 2, lambda t, r: order.append((t.name, r)))
    assert order == [(SHIM, 0), (CONTAINERD, 0), (SHIM, 1), (CONTAINERD, 1)]
    assert result.status == {SHIM: "ok", CONTAINERD: "ok"}


def test_a_failure_is_that_runtimes_status_and_ends_its_rounds_only() -> None:
    ctx = _ctx({SHIM: "ok", CONTAINERD: "ok"})
    result = ctx.new_result("w", "w")
    seen: list[tuple[str, int]] = []

    def step(t: Any, r: int) -> None:
        seen.append((t.name, r))
        if t.name == CONTAINERD:
            raise RuntimeError("boom")
    context.interleave(ctx, result, 3, step)
    assert seen == [(SHIM, 0), (CONTAINERD, 0), (SHIM, 1), (SHIM, 2)]
    assert result.status[CONTAINERD] == "failed: RuntimeError: boom" and result.failed
    assert result.status[SHIM] == "ok"


def test_unavailable_is_could_not_run_and_a_runtime_that_did_not_start_is_skipped() -> None:
    ctx = _ctx({SHIM: "ok", CONTAINERD: "could not run: containerd is not installed"})
    result = ctx.new_result("w", "w")
    seen: list[str] = []

    def step(t: Any, r: int) -> None:
        seen.append(t.name)
        raise Unavailable("critest is missing")
    context.interleave(ctx, result, 2, step)
    assert seen == [SHIM]
    assert result.status == {SHIM: "could not run: critest is missing",
                             CONTAINERD: "could not run: containerd is not installed"}
    assert not result.failed
