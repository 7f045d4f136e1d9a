"""Windows runtime costs measurable on Linux: binding overhead per HCS call, layer tar parsing.

    python -m bench.windows

- HCS call overhead: one HcsGetComputeSystemProperties through ComputeCoreApi and real ctypes into the
  CFUNCTYPE fake (create op, call, wait, free the result, close op), against a bare Python call of the
  fake's method (the reference): the ratio is what the binding layer adds. Real HCS calls are RPCs to
  vmcompute.exe and cost far more; this only bounds our own share.
- Layer tar parsing: a 64 MiB Windows layer tar (2048 files with PAX metadata and ADS) through
  layer_tar.parse into a null writer, against reading the same tar with tarfile alone (the reference).
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import tarfile
import time

from runtime.windows import _abi, hcs, layer_tar
from runtime.windows.testing.fake_dll import FakeDll
from runtime.windows.testing.fake_hcs import FakeHcs

def _fake() -> tuple[FakeHcs, hcs.ComputeCoreApi, hcs.SystemHandle]:
    fake = FakeHcs(lambda definition, doc: [])          # no schema validation: measure the binding only
    dll = FakeDll(fake, _abi.COMPUTECORE)
    hcs.bind(dll, _abi.COMPUTECORE)
    api = hcs.ComputeCoreApi(dll, fake.alloc.free)
    doc = {"Owner": "bench", "SchemaVersion": {"Major": 2, "Minor": 1},
           "Container": {"Storage": {"Layers": [], "Path": "\\\\?\\Volume{00000000-0000-0000-0000-000000000001}\\"}}}
    return fake, api, api.create_system("bench", json.dumps(doc))


def bench_calls(n: int = 5000) -> tuple[float, float]:
    fake, api, system = _fake()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            api.system_properties(system, "{}")
        samples.append((time.perf_counter() - start) / n)
    fake.calls.clear()
    ref = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            op = fake.HcsCreateOperation(None, None)
            fake.HcsGetComputeSystemProperties(next(iter(fake.system_handles)), op, None)
            fake.HcsCloseOperation(op)
        ref.append((time.perf_counter() - start) / n)
    api.close_system(system)
    return statistics.median(samples), statistics.median(ref)


class Null:
    def add(self, path: str, info: layer_tar.FileInfo, sddl: str) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def add_link(self, path: str, target: str) -> None:
        pass

    def remove(self, path: str) -> None:
        pass


def layer(files: int = 2048, size: int = 32 * 1024) -> bytes:
    buf = io.BytesIO()
    sd = base64.b64encode(b"\x01\x00\x04\x80" + b"\0" * 60).decode()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            info = tarfile.TarInfo(f"Files/dir{i % 32}/file{i}.dll")
            info.size = size
            info.pax_headers = {"MSWINDOWS.fileattr": "32", "MSWINDOWS.rawsd": sd,
                                "LIBARCHIVE.creationtime": "1700000000.5"}
            tar.addfile(info, io.BytesIO(bytes(size)))
            if i % 64 == 0:
                ads = tarfile.TarInfo(f"Files/dir{i % 32}/file{i}.dll:Zone.Identifier")
                ads.size = 25
                tar.addfile(ads, io.BytesIO(b"[ZoneTransfer]\nZoneId=3\n\n"))
    return buf.getvalue()


def bench_tar() -> tuple[float, float, int]:
    data = layer()
    ours, ref = [], []
    for _ in range(3):
        start = time.perf_counter()
        layer_tar.parse(io.BytesIO(data), Null())
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for member in tar:
                f = tar.extractfile(member)
                if f is not None:
                    while f.read(1 << 20):
                        pass
        ref.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(ref), len(data)


def main() -> None:
    ours, ref = bench_calls()
    print(f"hcs call through ctypes + fake DLL: {ours * 1e6:.1f} us/call; bare fake: {ref * 1e6:.1f} us/call; "
          f"binding adds {(ours - ref) * 1e6:.1f} us ({ours / ref:.2f}x)")
    t, r, size = bench_tar()
    mib = size / (1 << 20)
    print(f"layer tar parse: {mib / t:.0f} MiB/s; tarfile read alone: {mib / r:.0f} MiB/s; ratio {t / r:.2f}x "
          f"({mib:.0f} MiB, 2048 files)")


if __name__ == "__main__":
    main()
