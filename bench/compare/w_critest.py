"""Workload 1: `critest -benchmark` (container, pod and image lifecycles, image listing, pod+container from
scratch) with one parameters file for both runtimes; its JSON output files are parsed and pooled over rounds."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from .context import Context, interleave
from .stats import RUNTIMES, Dist, WorkloadResult, latency_figures
from .targets import Target, Unavailable

log = logging.getLogger("bench")

# Small images of the critest set (gcr.io/k8s-staging-cri-tools/test-image-*), mirrored for both runtimes. The
# listing images are removed after the image specs (critest's AfterEach): none of them is used by anything else.
PULL_IMAGE = "gcr.io/k8s-staging-cri-tools/test-image-1:latest"
LISTING_IMAGES = ("gcr.io/k8s-staging-cri-tools/test-image-1:latest",
                  "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
                  "gcr.io/k8s-staging-cri-tools/test-image-3:latest")
OUTPUT_FILES = (("container_benchmark_data.json", "container"), ("pod_benchmark_data.json", "pod"),
                ("image_lifecycle_benchmark_data.json", "image"), ("image_listing_benchmark_data.json", "listing"))
SCRATCH_SPEC = "start-container-benchmark"   # the report entry of "start a container from scratch"


def params_yaml(containers: int, pods: int, images: int) -> str:
    lines = [f"containersNumber: {containers}", "containersNumberParallel: 1",
             "containerBenchmarkTimeoutSeconds: 120",
             f"podsNumber: {pods}", "podsNumberParallel: 1", "podBenchmarkTimeoutSeconds: 120",
             f"imagesNumber: {images}", "imagesNumberParallel: 1", "imageBenchmarkTimeoutSeconds: 60",
             f"imagePullingBenchmarkImage: {PULL_IMAGE}", "imageListingBenchmarkImages:",
             *(f"  - {i}" for i in LISTING_IMAGES), "podContainerStartBenchmarkTimeoutSeconds: 30"]
    return "\n".join(lines) + "\n"


def parse_output(outdir: Path) -> dict[str, list[float]]:
    """`<set>/<operation>` → durations in seconds, from critest's LifecycleBenchmarksResultsSet files."""
    out: dict[str, list[float]] = {}
    for filename, group in OUTPUT_FILES:
        path = outdir / filename
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        names = data["operationsNames"]
        for point in data["datapoints"]:
            for name, ns in zip(names, point["operationsDurationsNs"]):
                out.setdefault(f"{group}/{name}", []).append(ns / 1e9)
    return out


def parse_report(report: Path) -> tuple[dict[str, str], list[float]]:
    """The state of each spec, and the durations of the pod+container-from-scratch measurement (seconds)."""
    states: dict[str, str] = {}
    scratch: list[float] = []
    for spec in json.loads(report.read_text())[0]["SpecReports"]:
        if spec.get("LeafNodeType") != "It":
            continue
        states[spec["LeafNodeText"]] = spec["State"]
        for entry in spec.get("ReportEntries") or []:
            if entry.get("Name") != SCRATCH_SPEC:
                continue
            experiment = json.loads(entry["Value"]["AsJSON"])
            for m in experiment.get("Measurements", []):
                scratch.extend(d / 1e9 for d in m.get("Durations") or [])
    return states, scratch


def run_once(ctx: Context, target: Target, r: int, pooled: dict[str, list[float]], raw: dict[str, Any]) -> None:
    if not ctx.critest.exists():
        raise Unavailable(f"{ctx.critest} is missing (make tools)")
    p = ctx.profile
    work = ctx.work / f"critest-{target.name}-{r}"
    outdir = work / "out"
    outdir.mkdir(parents=True)
    params = ctx.work / "critest-params.yaml"   # one file for both runtimes and every round
    if not params.exists():
        params.write_text(params_yaml(p.critest_containers, p.critest_pods, p.critest_images))
    report = work / "report.json"
    argv = [str(ctx.critest), "-benchmark", f"-runtime-endpoint={target.endpoint}",
            f"-image-endpoint={target.endpoint}", f"-benchmarking-params-file={params}",
            f"-benchmarking-output-dir={outdir}", f"-ginkgo.json-report={report}", "-ginkgo.no-color",
            "-ginkgo.timeout=20m"]
    with open(work / "critest.log", "w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work, timeout=1500)
    if not report.exists():
        raise RuntimeError(f"critest wrote no report (exit {proc.returncode}); see {work / 'critest.log'}")
    states, scratch = parse_report(report)
    failed = sorted(name for name, state in states.items() if state not in ("passed", "skipped"))
    if failed or proc.returncode != 0:
        tail = (work / "critest.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"critest exit {proc.returncode}, specs not passed: {failed}\n{tail}")
    for key, values in parse_output(outdir).items():
        pooled.setdefault(key, []).extend(values)
    pooled.setdefault("scratch/Run+Create+Start+Stop+Remove", []).extend(scratch)
    raw.setdefault(target.name, []).append({"round": r, "specs": states})


def run(ctx: Context) -> WorkloadResult:
    result = ctx.new_result("critest", "critest -benchmark (per operation, ms)")
    pooled: dict[str, dict[str, list[float]]] = {name: {} for name in RUNTIMES}
    raw: dict[str, Any] = {}
    interleave(ctx, result, ctx.profile.critest_rounds,
               lambda target, r: run_once(ctx, target, r, pooled[target.name], raw))
    keys = list(dict.fromkeys(k for name in RUNTIMES for k in pooled[name]))
    for key in keys:
        dists = {name: Dist.of(pooled[name].get(key, [])) for name in RUNTIMES if result.status[name] == "ok"}
        result.figures += latency_figures(key, dists, quantiles=(50, 99))
    p = ctx.profile
    result.notes.append(f"{p.critest_rounds} round(s) per runtime, each: {p.critest_containers} containers, "
                        f"{p.critest_pods} pods, {p.critest_images} image pulls/lists, parallelism 1; "
                        f"pull image {PULL_IMAGE}")
    result.raw = {"specs": raw, "samples_s": pooled}
    return result

