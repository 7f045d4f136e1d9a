"""Leases: what in-flight pulls are about to use, so garbage collection keeps it.

A pull takes a lease on every blob and snapshot it will reference *before*
it checks whether they exist; garbage collection decides under the same lock
and skips anything leased. So a collection running during a pull can never
delete a layer the pull just found on disk and decided to reuse.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Leases:
    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._blobs: Counter[str] = Counter()
        self._snapshots: Counter[str] = Counter()

    @contextmanager
    def hold(self, blobs: Iterable[str], snapshots: Iterable[str]) -> Iterator[None]:
        blob_list, snap_list = list(blobs), list(snapshots)
        with self._lock:
            self._blobs.update(blob_list)
            self._snapshots.update(snap_list)
        try:
            yield
        finally:
            with self._lock:
                self._blobs.subtract(blob_list)
                self._snapshots.subtract(snap_list)
                self._blobs = +self._blobs       # drop zero counts
                self._snapshots = +self._snapshots

    def held(self) -> tuple[set[str], set[str]]:
        with self._lock:
            return set(self._blobs), set(self._snapshots)
