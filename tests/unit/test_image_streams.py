"""Layer streams: the digest covers every byte, decompression is bounded, bad streams name the layer."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest

from cri_shim.errors import FailedPrecondition, ResourceExhausted
from cri_shim.images.manifest import Compression
from cri_shim.images.streams import CompressedReader, Decompressor
from tests.harness import imagebuild


def pipeline(blob: bytes, compression: Compression, budget: int = 0) -> tuple[CompressedReader, Decompressor]:
    compressed = CompressedReader(io.BytesIO(blob), None)
    return compressed, Decompressor(compressed, compression, budget, "layer L")


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


def test_multi_member_gzip_is_read_to_the_end() -> None:
    blob = gzip.compress(b"first ") + gzip.compress(b"second")
    compressed, diff = pipeline(blob, Compression.GZIP)
    assert diff.read(-1) + diff.read(-1) == b"first second"


def test_truncated_gzip_names_the_layer() -> None:
    blob = gzip.compress(os.urandom(100_000))[:50_000]
    _, diff = pipeline(blob, Compression.GZIP)
    with pytest.raises(FailedPrecondition, match="layer L: the gzip stream ends early"):
        diff.drain()


def test_garbage_is_not_gzip() -> None:
    _, diff = pipeline(b"this is not gzip at all", Compression.GZIP)
    with pytest.raises(FailedPrecondition, match="not a valid gzip stream"):
        diff.drain()


def test_garbage_is_not_zstd() -> None:
    _, diff = pipeline(b"this is not zstd at all", Compression.ZSTD)
    with pytest.raises(FailedPrecondition, match="not a valid zstd stream"):
        diff.drain()


def test_decompression_bomb_stops_at_the_budget() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    _, diff = pipeline(bomb, Compression.GZIP, budget=8 << 20)
    with pytest.raises(ResourceExhausted, match="larger than the 8388608 bytes allowed"):
        diff.drain()
    assert diff.count <= (8 << 20) + (2 << 20)  # stopped near the budget, not at 64 MiB


def test_small_reads_are_served_from_one_hashed_chunk() -> None:
    """tarfile reads 64 KiB at a time: every byte comes out once, in order, and is hashed once."""
    raw = os.urandom(3 << 20) + b"text " * 300_000
    compressed, diff = pipeline(gzip.compress(raw), Compression.GZIP)
    pieces = []
    while chunk := diff.read(64 << 10):
        assert 0 < len(chunk) <= 64 << 10
        pieces.append(chunk)
    assert b"".join(pieces) == raw
    assert diff.digest == sha(raw) and diff.count == len(raw)
    assert diff.read(64 << 10) == b""  # stays at the end


def test_drain_after_a_partial_read_hashes_the_rest() -> None:
    raw = os.urandom(2 << 20)
    _, diff = pipeline(gzip.compress(raw), Compression.GZIP)
    assert diff.read(1000) == raw[:1000]
    diff.drain()
    assert diff.digest == sha(raw) and diff.count == len(raw)
