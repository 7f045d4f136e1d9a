"""Converted list items, kept per record: ListPodSandbox/ListContainers (kubelet calls both every second)
rebuild a protobuf item only for records that changed since the last list.

Records are immutable and replaced on every change, so "same object" means "unchanged".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class HasId(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=HasId)
M = TypeVar("M")


class ConvertedCache(Generic[R, M]):
    def __init__(self, convert: Callable[[R], M]) -> None:
        self._convert = convert
        self._items: dict[str, tuple[R, M]] = {}
        self._lock = threading.Lock()

    def get(self, record: R) -> M:
        hit = self._items.get(record.id)
        if hit is not None and hit[0] is record:
            return hit[1]
        message = self._convert(record)
        with self._lock:
            self._items[record.id] = (record, message)
        return message

    def prune(self, live_ids: set[str]) -> None:
        """Drop the entries of removed records (called after a list, so at most one list's worth lingers)."""
        if len(self._items) <= len(live_ids):
            return
        with self._lock:
            for k in [k for k in self._items if k not in live_ids]:
                del self._items[k]
