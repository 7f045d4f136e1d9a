"""Streaming a layer: hash the compressed bytes, keep a copy, decompress, hash again.

    registry/file -> CompressedReader (sha256 = digest, copy into the content store)
                  -> Decompressor (gzip via isal or zlib, zstd via zstandard, or none; sha256 = diff_id; byte budget)
                  -> tar extraction (runtime.linux.unpack.unpack_layer)

Everything is read sequentially, once, on one thread, with bounded memory:
decompression output is capped per call, so a bomb costs CPU, never RAM, and
the byte budget stops it.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol, cast

import zstandard

from cri_shim.errors import FailedPrecondition, ResourceExhausted
from cri_shim.images.content import Ingest
from cri_shim.images.manifest import Compression

CHUNK = 1 << 20


class Inflater(Protocol):
    """What Decompressor uses of a zlib decompressobj (zlib's own, or isal's drop-in)."""

    @property
    def eof(self) -> bool: ...
    @property
    def unconsumed_tail(self) -> bytes: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def zlib_gunzip() -> Inflater:
    return zlib.decompressobj(wbits=31)


def _fastest_gunzip() -> tuple[Callable[[], Inflater], tuple[type[Exception], ...]]:
    """ISA-L's inflate when the `isal` package is installed (~2.5x zlib's speed, gzip CRC included), else zlib."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib_gunzip, (zlib.error,)

    def isal_gunzip() -> Inflater:
        return isal_zlib.decompressobj(wbits=31)

    isal_error = cast(type[Exception], isal_zlib.error)  # a class; its stub calls it an instance
    return isal_gunzip, (zlib.error, isal_error)


GUNZIP, GUNZIP_ERRORS = _fastest_gunzip()


class Source(Protocol):
    def readinto(self, buf: memoryview) -> int: ...


class ClosableSource(Source, Protocol):
    def close(self) -> None: ...


class CompressedReader:
    """Reads a blob as it arrives: every byte is hashed and, with `sink`, written to the content store."""

    def __init__(self, source: Source, sink: Ingest | None) -> None:
        self._source = source
        self._sink = sink
        self._hash = hashlib.sha256()
        self._buf = bytearray(CHUNK)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        view = memoryview(self._buf)[:CHUNK if n < 0 else min(n, CHUNK)]
        got = self._source.readinto(view)
        if got == 0:
            return b""
        data = bytes(view[:got])
        self._hash.update(data)
        if self._sink is not None:
            self._sink.write(data)
        self.count += got
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class Decompressor:
    """A file-like `read(n)` over the decompressed (tar) stream, hashed for the diff_id, held to a byte budget.

    Output is produced, hashed and counted in chunks of up to 1 MiB whatever
    size the reader asks for (tarfile asks for 64 KiB), then handed out in
    slices: fewer, larger hash and inflate calls mean fewer GIL hand-offs
    between parallel layer threads.
    """

    def __init__(self, source: CompressedReader, compression: Compression, max_bytes: int, what: str,
                 gunzip: Callable[[], Inflater] = GUNZIP) -> None:
        self._source = source
        self._compression = compression
        self._max = max_bytes
        self._what = what
        self._hash = hashlib.sha256()
        # The last decompressed chunk and how much of it was handed out. Kept as immutable bytes and
        # sliced, never as a bytearray that grows and shrinks: resizing a MiB-sized buffer on every
        # read made malloc return and re-fault its pages, which cost more CPU than the gunzip itself.
        self._chunk = b""
        self._offset = 0
        self._eof = False
        self._new_gunzip = gunzip
        self._gzip = gunzip() if compression is Compression.GZIP else None
        self._zstd = (zstandard.ZstdDecompressor().stream_reader(source,  # type: ignore[arg-type]  # needs read()
                                                                 read_size=CHUNK, read_across_frames=True)
                      if compression is Compression.ZSTD else None)
        self.count = 0

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (fewer is fine for a stream reader); b"" only at the end of the stream."""
        want = CHUNK if n is None or n < 0 else n
        if self._offset >= len(self._chunk):
            self._chunk, self._offset = self._next_chunk(), 0
        if self._offset == 0 and want >= len(self._chunk):
            self._offset = len(self._chunk)
            return self._chunk  # the whole chunk: no copy
        data = self._chunk[self._offset:self._offset + want]
        self._offset += len(data)
        return data

    def drain(self) -> None:
        while self._next_chunk():
            pass
        self._chunk, self._offset = b"", 0

    def _next_chunk(self) -> bytes:
        """The next decompressed chunk (up to CHUNK bytes), hashed and counted; b"" at the end."""
        while not self._eof:
            chunk = self._decompress(CHUNK)
            if chunk:
                self.count += len(chunk)
                if self._max and self.count > self._max:
                    raise ResourceExhausted(f"{self._what}: uncompressed layer is larger than the {self._max} "
                                            "bytes allowed (images.max_layer_bytes)")
                self._hash.update(chunk)  # a MiB at a time: hashlib releases the GIL for the whole update
                return chunk
        return b""

    def _decompress(self, size: int) -> bytes:
        """Up to `size` more decompressed bytes; sets `_eof` at the end of the stream."""
        if self._compression is Compression.NONE:
            chunk = self._source.read(size)
        elif self._zstd is not None:
            try:
                chunk = self._zstd.read(size)
            except zstandard.ZstdError as e:
                raise FailedPrecondition(f"{self._what}: not a valid zstd stream ({e})") from None
        else:
            return self._gunzip(size)
        self._eof = not chunk
        return chunk

    def _gunzip(self, size: int) -> bytes:
        d = self._gzip
        assert d is not None
        try:
            if d.eof:
                rest = d.unused_data or self._source.read(CHUNK)
                if rest[:2] != b"\x1f\x8b":
                    self._eof = True  # trailing bytes after the last member: hashed, not extracted
                    return b""
                d = self._gzip = self._new_gunzip()  # another gzip member follows
                return d.decompress(rest, size)
            data = d.unconsumed_tail or self._source.read(CHUNK)
            if not data:
                raise FailedPrecondition(f"{self._what}: the gzip stream ends early (truncated layer)")
            return d.decompress(data, size)
        except GUNZIP_ERRORS as e:
            raise FailedPrecondition(f"{self._what}: not a valid gzip stream ({e})") from None
