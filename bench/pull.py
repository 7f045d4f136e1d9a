"""Cold pull of a 5-layer ~200 MB image from a loopback registry: cri-shim next to skopeo.

    CRI_SHIM_TEST_TMP=/tmp/cst-bench .venv/bin/python -m bench.pull [--runs 3] [--layer-mb 40]

skopeo (Debian's, 1.9) copies the image to a local directory: it downloads and
verifies the compressed blobs, nothing more. cri-shim's PullImage downloads,
verifies, stores the blobs, decompresses and unpacks every layer into its
snapshot and records the image. Both start cold each run (cri-shim's image is
removed, which deletes its blobs and snapshots; skopeo's directory is
deleted). Prints the median of each and the ratio; no assertion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness import imagebuild as ib
from tests.harness.daemon import make_workdir, new_daemon
from tests.harness.registry import start_registry

LAYERS = 5


def layer(index: int, megabytes: int) -> ib.Layer:
    """Half random (incompressible), half repetitive text: roughly what real layers compress to (~55%)."""
    rng = os.urandom(megabytes << 19)
    text = (f"layer {index} line of a config or script file\n" * ((megabytes << 19) // 45 + 1)).encode()
    files = [ib.file(f"layer{index}/random-{i}", rng[i << 20:(i + 1) << 20]) for i in range(megabytes // 2)]
    files += [ib.file(f"layer{index}/text-{i}", text[i << 20:(i + 1) << 20]) for i in range(megabytes // 2)]
    return ib.Layer(ib.tree(files))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layer-mb", type=int, default=40)
    args = ap.parse_args()

    reg = start_registry()
    work = make_workdir("bench-pull")
    try:
        started = time.monotonic()
        image = ib.build_image(ib.ImageSpec(layers=tuple(layer(i, args.layer_mb) for i in range(LAYERS))))
        ib.push(image, reg.host, "bench/big", "v1")
        compressed = sum(d["size"] for d in image.manifest_json()["layers"])
        print(f"image: {LAYERS} layers, {LAYERS * args.layer_mb} MB unpacked, {compressed / 1e6:.0f} MB compressed "
              f"(built and pushed in {time.monotonic() - started:.1f}s)")

        skopeo = []
        for _ in range(args.runs):
            dest = work / "skopeo-dir"
            shutil.rmtree(dest, ignore_errors=True)
            t = time.monotonic()
            subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{reg.host}/bench/big:v1", f"dir:{dest}"], check=True)
            skopeo.append(time.monotonic() - t)
            shutil.rmtree(dest, ignore_errors=True)

        hosts = work / "hosts" / reg.host
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(f'server = "http://{reg.host}"\n')
        d = new_daemon({"registry": {"config_path": str(work / "hosts")}}, log_level="info").start()
        shim = []
        try:
            client = d.client()
            for _ in range(args.runs):
                t = time.monotonic()
                ref = client.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(
                    image=f"{reg.host}/bench/big:v1")), timeout=600).image_ref
                shim.append(time.monotonic() - t)
                client.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
            client.close()
        finally:
            stop_and_clean(d)

        s, c = statistics.median(skopeo), statistics.median(shim)
        print(f"skopeo copy to dir (download + verify):          median {s:.2f}s  runs {[round(x, 2) for x in skopeo]}")
        print(f"cri-shim PullImage (download + verify + unpack): median {c:.2f}s  runs {[round(x, 2) for x in shim]}")
        print(f"ratio cri-shim / skopeo: {c / s:.2f}x   ({compressed / 1e6 / c:.0f} MB/s compressed, "
              f"{LAYERS * args.layer_mb / c:.0f} MB/s unpacked)")
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
