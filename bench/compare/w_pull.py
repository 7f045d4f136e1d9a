"""Workload 5: cold pull of a 5-layer image (bench/pull.py's layers: half random, half text, ~55% compressible)
from the loopback registry, through each runtime's PullImage (download, verify, store, unpack), then RemoveImage.
Before each timed pull the image's layer blobs must be gone from the runtime's directory, so the pull is cold."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from bench.pull import LAYERS, layer
from cri_shim.api import api_pb2 as pb
from tests.harness import imagebuild as ib

from .context import Context, interleave
from .stats import RUNTIMES, Figure, WorkloadResult
from .targets import Target

REPO_PATH = "cri-shim-bench/big"
# Under a mirrored registry name, so both runtimes fetch it from the local registry exactly like the other images.
IMAGE = f"registry.k8s.io/{REPO_PATH}:v1"


@dataclass(frozen=True)
class BigImage:
    name: str
    layer_hexes: tuple[str, ...]
    compressed_bytes: int
    unpacked_mb: int


def push_image(registry_host: str, layer_mb: int) -> BigImage:
    image = ib.build_image(ib.ImageSpec(layers=tuple(layer(i, layer_mb) for i in range(LAYERS))))
    ib.push(image, registry_host, REPO_PATH, "v1")
    layers = image.manifest_json()["layers"]
    return BigImage(IMAGE, tuple(d["digest"].split(":", 1)[1] for d in layers), sum(d["size"] for d in layers),
                    LAYERS * layer_mb)


def blobs_present(target: Target, hexes: tuple[str, ...]) -> list[str]:
    """Files named after a layer digest anywhere under the runtime's work dir (both runtimes name blobs so)."""
    wanted = set(hexes)
    found = []
    for dirpath, _dirs, files in os.walk(target.workdir):
        found += [os.path.join(dirpath, f) for f in files if f in wanted]
    return found


def pull_once(target: Target, image: BigImage, into: list[float]) -> None:
    client = target.client()
    try:
        spec = pb.ImageSpec(image=image.name)
        if client.image.ImageStatus(pb.ImageStatusRequest(image=spec), timeout=60).image.id:
            client.image.RemoveImage(pb.RemoveImageRequest(image=spec), timeout=300)
        left = blobs_present(target, image.layer_hexes)
        if left:
            raise RuntimeError(f"not a cold pull: layer blobs still stored: {left[:2]}")
        t = time.perf_counter()
        client.image.PullImage(pb.PullImageRequest(image=spec), timeout=1200)
        into.append(time.perf_counter() - t)
        client.image.RemoveImage(pb.RemoveImageRequest(image=spec), timeout=300)
    finally:
        client.close()


def run(ctx: Context) -> WorkloadResult:
    p = ctx.profile
    result = ctx.new_result("pull", "cold pull of a 5-layer image from the loopback registry")
    t = time.perf_counter()
    image = push_image(ctx.registry_host, p.pull_layer_mb)
    built = time.perf_counter() - t
    samples: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    interleave(ctx, result, p.pull_rounds, lambda target, r: pull_once(target, image, samples[target.name]))

    def value(r: str, f: str) -> float | None:
        s = samples[r]
        if not s or result.status[r] != "ok":
            return None
        return {"median": statistics.median(s), "min": min(s)}[f]

    mb = image.compressed_bytes / 1e6
    medians = {r: value(r, "median") for r in RUNTIMES}
    result.figures = [
        Figure("PullImage median", "s", medians),
        Figure("PullImage fastest", "s", {r: value(r, "min") for r in RUNTIMES}),
        Figure("download rate (compressed, median)", "MB/s",
               {r: mb / v if v else None for r, v in medians.items()}),
    ]
    result.notes.append(f"{LAYERS} layers, {image.unpacked_mb} MB unpacked, {mb:.0f} MB compressed (built and "
                        f"pushed in {built:.0f} s); {p.pull_rounds} cold pull(s) per runtime; the rate is the "
                        f"reciprocal of the time, not a higher-is-worse figure")
    result.raw = {"image": {"layers": LAYERS, "unpacked_mb": image.unpacked_mb,
                            "compressed_bytes": image.compressed_bytes}, "seconds": samples}
    return result
