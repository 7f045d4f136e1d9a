"""Layer streams: the digest covers every byte, decompression is bounded, bad streams name the layer."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Callable

import pytest

from cri_shim.errors import FailedPrecondition, ResourceExhausted
from cri_shim.images.manifest import Compression
from cri_shim.images import streams
from cri_shim.images.streams import CompressedReader, Decompressor, Inflater
from tests.harness import imagebuild

# Every gzip test runs with zlib and with the inflater the daemon picks (isal's when installed).
GUNZIPS = {"zlib": streams.zlib_gunzip, "default": streams.GUNZIP}


@pytest.fixture(params=sorted(GUNZIPS))
def gunzip(request: pytest.FixtureRequest) -> Callable[[], Inflater]:
    return GUNZIPS[request.param]


def pipeline(blob: bytes, compression: Compression, budget: int = 0,
             gunzip: Callable[[], Inflater] = streams.GUNZIP) -> tuple[CompressedReader, Decompressor]:
    compressed = CompressedReader(io.BytesIO(blob), None)
    return compressed, Decompressor(compressed, compression, budget, "layer L", gunzip)


def test_isal_is_the_default_inflater_when_installed() -> None:
    pytest.importorskip("isal")
    assert streams.GUNZIP is not streams.zlib_gunzip


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", list(Compression))
def test_round_trip_hashes_both_sides(compression: Compression) -> None:
    raw = os.urandom(300_000) + b"\0" * 3_000_000
    blob = {Compression.NONE: raw, Compression.GZIP: gzip.compress(raw),
            Compression.ZSTD: imagebuild.zstd_bytes(raw)}[compression]
    compressed, diff = pipeline(blob, compression)
    out = bytearray()
    while chunk := diff.read(10240):  # tarfile's block reads
        out += chunk
    compressed.drain()
    assert bytes(out) == raw
    assert diff.digest == sha(raw) and diff.count == len(raw)
    assert compressed.digest == sha(blob) and compressed.count == len(blob)


def test_multi_member_gzip_is_read_to_the_end(gunzip: Callable[[], Inflater]) -> None:
    blob = gzip.compress(b"first ") + gzip.compress(b"second")
    compressed, diff = pipeline(blob, Compression.GZIP, gunzip=gunzip)
    assert diff.read(-1) + diff.read(-1) == b"first second"


def test_truncated_gzip_names_the_layer(gunzip: Callable[[], Inflater]) -> None:
    blob = gzip.compress(os.urandom(100_000))[:50_000]
    _, diff = pipeline(blob, Compression.GZIP, gunzip=gunzip)
    with pytest.raises(FailedPrecondition, match="layer L: the gzip stream ends early"):
        diff.drain()


def test_garbage_is_not_gzip(gunzip: Callable[[], Inflater]) -> None:
    _, diff = pipeline(b"this is not gzip at all", Compression.GZIP, gunzip=gunzip)
    with pytest.raises(FailedPrecondition, match="not a valid gzip stream"):
        diff.drain()


def test_garbage_is_not_zstd() -> None:
    _, diff = pipeline(b"this is not zstd at all", Compression.ZSTD)
    with pytest.raises(FailedPrecondition, match="not a valid zstd stream"):
        diff.drain()


def test_decompression_bomb_stops_at_the_budget(gunzip: Callable[[], Inflater]) -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    _, diff = pipeline(bomb, Compression.GZIP, budget=8 << 20, gunzip=gunzip)
    with pytest.raises(ResourceExhausted, match="larger than the 8388608 bytes allowed"):
        diff.drain()
    assert diff.count <= (8 << 20) + (2 << 20)  # stopped near the budget, not at 64 MiB


def test_small_reads_are_served_from_one_hashed_chunk(gunzip: Callable[[], Inflater]) -> None:
    """tarfile reads 64 KiB at a time: every byte comes out once, in order, and is hashed once."""
    raw = os.urandom(3 << 20) + b"text " * 300_000
    compressed, diff = pipeline(gzip.compress(raw), Compression.GZIP, gunzip=gunzip)
    pieces = []
    while chunk := diff.read(64 << 10):
        assert 0 < len(chunk) <= 64 << 10
        pieces.append(chunk)
    assert b"".join(pieces) == raw
    assert diff.digest == sha(raw) and diff.count == len(raw)
    assert diff.read(64 << 10) == b""  # stays at the end


def test_drain_after_a_partial_read_hashes_the_rest(gunzip: Callable[[], Inflater]) -> None:
    raw = os.urandom(2 << 20)
    _, diff = pipeline(gzip.compress(raw), Compression.GZIP, gunzip=gunzip)
    assert diff.read(1000) == raw[:1000]
    diff.drain()
    assert diff.digest == sha(raw) and diff.count == len(raw)


def test_bad_gzip_crc_is_an_error(gunzip: Callable[[], Inflater]) -> None:
    blob = bytearray(gzip.compress(os.urandom(200_000)))
    blob[-8] ^= 0xFF  # the CRC32 in the member's trailer
    _, diff = pipeline(bytes(blob), Compression.GZIP, gunzip=gunzip)
    with pytest.raises(FailedPrecondition, match="layer L: not a valid gzip stream"):
        diff.drain()


def test_bytes_after_the_last_gzip_member_end_the_stream(gunzip: Callable[[], Inflater]) -> None:
    blob = gzip.compress(b"tar bytes") + b"\0" * 1000
    compressed, diff = pipeline(blob, Compression.GZIP, gunzip=gunzip)
    diff.drain()
    compressed.drain()
    assert diff.digest == sha(b"tar bytes")
    assert compressed.digest == sha(blob)  # trailing bytes are part of the blob's digest
