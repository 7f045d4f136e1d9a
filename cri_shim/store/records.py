"""In-memory indexes of sandboxes and containers, persisted to the metadata store.

ListPodSandbox and ListContainers (kubelet calls both every second) are answered
from these dictionaries only. Every change goes to SQLite first and to memory
second, under one lock, so memory never shows what a crash would lose.

A record's `state` starts as CREATING: the row exists from the moment the name
is reserved, so a crash mid-creation leaves a row that restart recovery finds,
cleans up and deletes. Nothing in CREATING is ever listed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from cri_shim.store.db import MetadataStore


class Record(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    def to_row(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Table:
    name: str            # SQLite table: id TEXT PRIMARY KEY, name TEXT UNIQUE, body TEXT (JSON)


class RecordStore(Generic[R]):
    """A tiny store: add, get, update, delete, values. Readers get the live object; writers go through update()."""

    def __init__(self, db: MetadataStore, table: Table, decode: Callable[[dict[str, Any]], R]) -> None:
        self._db, self._table, self._decode = db, table, decode
        self._items: dict[str, R] = {}
        self._lock = threading.RLock()

    def load(self) -> list[R]:
        rows = self._db.query(f"SELECT body FROM {self._table.name}")
        with self._lock:
            self._items = {}
            for row in rows:
                item = self._decode(json.loads(row["body"]))
                self._items[item.id] = item
            return list(self._items.values())

    def add(self, item: R) -> None:
        with self._lock:
            with self._db.transaction() as conn:
                conn.execute(f"INSERT INTO {self._table.name}(id, name, body) VALUES (?, ?, ?)",
                             (item.id, item.name, json.dumps(item.to_row(), sort_keys=True)))
            self._items[item.id] = item

    def put(self, item: R) -> None:
        """Persist a changed record (the caller replaced fields on a copy)."""
        with self._lock:
            with self._db.transaction() as conn:
                conn.execute(f"UPDATE {self._table.name} SET name = ?, body = ? WHERE id = ?",
                             (item.name, json.dumps(item.to_row(), sort_keys=True), item.id))
            self._items[item.id] = item

    def delete(self, item_id: str) -> None:
        with self._lock:
            with self._db.transaction() as conn:
                conn.execute(f"DELETE FROM {self._table.name} WHERE id = ?", (item_id,))
            self._items.pop(item_id, None)

    def get(self, item_id: str) -> R | None:
        with self._lock:
            return self._items.get(item_id)

    def values(self) -> list[R]:
        with self._lock:
            return list(self._items.values())

    def find(self, id_or_prefix: str) -> R | None:
        """Exact id, or a unique id prefix (crictl users type short ids)."""
        with self._lock:
            item = self._items.get(id_or_prefix)
            if item is not None or not id_or_prefix:
                return item
            matches = [v for k, v in self._items.items() if k.startswith(id_or_prefix)]
            return matches[0] if len(matches) == 1 else None

    def matching(self, predicate: Callable[[R], bool]) -> Iterable[R]:
        with self._lock:
            items = list(self._items.values())
        return (i for i in items if predicate(i))


def labels_match(labels: dict[str, str], selector: Any) -> bool:
    """CRI label selectors: every key/value pair must be present exactly."""
    return all(labels.get(k) == v for k, v in selector.items())
