"""The content store: blobs addressed by digest under `<root>/content/sha256/`.

A blob is written to a temp file in `<root>/content/ingest/`, its digest and
size are verified, it is fsync'ed and renamed into place: a blob that exists
under its name is always complete and correct. Leftovers in `ingest/` (a crash
mid-download) are removed at startup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cri_shim.errors import FailedPrecondition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobUsage:
    bytes: int    # allocated on disk (st_blocks * 512)
    inodes: int = 1


class Ingest:
    """A blob being written: `write` as it streams, then `commit(digest)` or `abort()`."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        self.path = store.ingest_dir / secrets.token_hex(12)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def commit(self, digest: str) -> None:
        """Make the (already verified) blob visible under `digest`."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._done = True
        os.rename(self.path, self._store.path(digest))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        os.close(self._fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "sha256"
        self.ingest_dir = root / "ingest"

    def prepare(self) -> None:
        """Create the directories and drop partial downloads a crash left behind."""
        for d in (self.root, self.blob_dir, self.ingest_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.ingest_dir.iterdir():
            log.info("removing a partial download left by a previous run: %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        algorithm, _, hex_part = digest.partition(":")
        if algorithm != "sha256" or len(hex_part) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blob_dir / hex_part

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def usage(self, digest: str) -> BlobUsage | None:
        try:
            st = os.stat(self.path(digest))
        except FileNotFoundError:
            return None
        return BlobUsage(bytes=st.st_blocks * 512)

    def ingest(self) -> Ingest:
        return Ingest(self)

    def write(self, digest: str, data: bytes) -> None:
        """Store a small blob whose digest the caller has verified."""
        if hashlib.sha256(data).hexdigest() != digest.partition(":")[2]:
            raise FailedPrecondition(f"blob {digest}: content does not match its digest")
        if self.exists(digest):
            return
        ingest = self.ingest()
        try:
            ingest.write(data)
            ingest.commit(digest)
        finally:
            ingest.abort()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.blob_dir.iterdir()}
