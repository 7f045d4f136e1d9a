"""Layer unpack throughput: runtime.linux.unpack vs GNU tar and Python's tarfile on the same disk.

    sudo .venv/bin/python -m bench.unpack [--mb 200] [--runs 3] [--dir /var/tmp/x]

Builds (once) a deterministic ~200 MB layer shaped like a distro image
(a few large binaries, thousands of small files in hundreds of directories,
symlinks, hardlinks) and a small-file-heavy layer, then times extracting
each into an empty directory on the same filesystem: our unpacker reading
the uncompressed tar as a stream, our unpacker behind gzip decompression
(what a pull does), `tar -xp --numeric-owner` and `tarfile.extractall`.
Prints MB/s (uncompressed tar bytes per wall second), entries/s and ratios
against GNU tar. Page cache is warm for the source tar; each run starts after
a sync(), and nothing is fsync'ed by any contender.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runtime.linux.unpack import unpack_layer
from tests.harness import imagebuild as ib


def distro_like(total_mb: int, seed: int = 1) -> list[ib.Entry]:
    rnd = random.Random(seed)
    entries: list[ib.Entry] = []
    big_total = total_mb * 6 // 10 << 20           # 60 % in large binaries
    while big_total > 0:
        size = min(big_total, rnd.randint(1 << 20, 12 << 20))
        entries.append(ib.file(f"usr/lib/big/lib{len(entries)}.so", rnd.randbytes(size), mode=0o755))
        big_total -= size
    small_total = total_mb * 4 // 10 << 20         # 40 % in small files, ~8 KiB average
    n = 0
    while small_total > 0:
        size = min(small_total, int(rnd.expovariate(1 / 8192)) + 1)
        d = f"usr/share/pkg{n % 400}/sub{n % 7}"
        entries.append(ib.file(f"{d}/file{n}.txt", rnd.randbytes(size)))
        if n % 50 == 0:
            entries.append(ib.symlink(f"{d}/link{n}", f"file{n}.txt"))
        if n % 200 == 0:
            entries.append(ib.hardlink(f"{d}/hard{n}", f"{d}/file{n}.txt"))
        small_total -= size
        n += 1
    return list(ib.tree(entries))


def small_files(count: int, size: int = 4096, seed: int = 2) -> list[ib.Entry]:
    rnd = random.Random(seed)
    return list(ib.tree(ib.file(f"d{i % 256}/f{i}", rnd.randbytes(size)) for i in range(count)))


def timed(fn: Callable[[Path], None], workdir: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        target = workdir / "target"
        target.mkdir()
        os.sync()  # start each run with no dirty pages from the previous one queued for writeback
        t0 = time.perf_counter()
        fn(target)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(target)
    return statistics.median(times)


def contenders(tar: Path, gz: Path) -> dict[str, Callable[[Path], None]]:
    def ours(target: Path) -> None:
        with tar.open("rb") as f:
            unpack_layer(f, target)

    def ours_gzip(target: Path) -> None:
        with gzip.open(gz, "rb") as f:
            unpack_layer(f, target)  # type: ignore[arg-type]

    def gnu_tar(target: Path) -> None:
        subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", str(tar), "-C", str(target)], check=True)

    def py_tarfile(target: Path) -> None:
        with tarfile.open(tar, "r|") as tf:
            tf.extractall(target, numeric_owner=True, filter="tar")

    return {"cri-shim unpack": ours, "cri-shim unpack + gunzip": ours_gzip, "GNU tar -xp": gnu_tar,
            "tarfile.extractall": py_tarfile}


def bench_layer(name: str, entries: list[ib.Entry], workdir: Path, runs: int) -> None:
    tar = workdir / f"{name}.tar"
    gz = workdir / f"{name}.tar.gz"
    if not tar.exists():
        with tar.open("wb") as f:
            ib.write_tar(entries, f)
        gz.write_bytes(ib.gzip_bytes(tar.read_bytes(), level=1))
    size = tar.stat().st_size
    results = {label: timed(fn, workdir, runs) for label, fn in contenders(tar, gz).items()}
    ref = results["GNU tar -xp"]
    print(f"\n{name}: {size / 1e6:.0f} MB tar, {len(entries)} entries, median of {runs}")
    print(f"  {'contender':28} {'seconds':>8} {'MB/s':>8} {'entries/s':>10} {'vs GNU tar':>10}")
    for label, secs in results.items():
        print(f"  {label:28} {secs:8.2f} {size / 1e6 / secs:8.0f} {len(entries) / secs:10.0f} {ref / secs:9.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--small-files", type=int, default=12800)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir, removed after)")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/unpack.py needs root (ownership, device nodes, trusted xattrs)")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="cri-shim-bench-unpack-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        bench_layer(f"distro-like-{args.mb}MB", distro_like(args.mb), workdir, args.runs)
        bench_layer(f"small-files-{args.small_files}", small_files(args.small_files), workdir, args.runs)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
