"""The metadata database: SQLite in WAL mode with synchronous=FULL.

Why SQLite: one file, atomic multi-row transactions, and a crash at any
instant leaves either the old or the new state (WAL + FULL sync), which is
what restart recovery builds on. The schema is versioned; `MIGRATIONS` only
ever grows, each entry moving the schema forward by one version, so a store
written by an older cri-shim opens in a newer one. A store written by a newer
cri-shim is refused instead of being misread.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from cri_shim.errors import StartupError

log = logging.getLogger(__name__)

# (version, SQL). Append new versions at the end; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE settings (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
    """),
    (2, """
        CREATE TABLE sandboxes (
            id   TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            body TEXT NOT NULL
        );
        CREATE TABLE containers (
            id   TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            body TEXT NOT NULL
        );
    """),
    (3, """
        CREATE TABLE images (
            id   TEXT PRIMARY KEY,
            body TEXT NOT NULL
        );
        CREATE TABLE image_names (
            name     TEXT PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
        );
        CREATE INDEX image_names_by_image ON image_names(image_id);
        CREATE TABLE image_users (
            container_id TEXT PRIMARY KEY,
            image_id     TEXT NOT NULL,
            snapshot_ids TEXT NOT NULL
        );
        CREATE TABLE snapshots (
            chain_id   TEXT PRIMARY KEY,
            used_bytes INTEGER NOT NULL,
            inodes     INTEGER NOT NULL
        );
    """),
    # Pod networking: built-in network IP allocations and the hostPorts every pod publishes.
    (4, """
        CREATE TABLE network_ips (
            subnet     TEXT NOT NULL,
            ip         TEXT NOT NULL,
            sandbox_id TEXT NOT NULL,
            PRIMARY KEY (subnet, ip)
        );
        CREATE UNIQUE INDEX network_ips_by_sandbox ON network_ips(subnet, sandbox_id);
        CREATE TABLE network_hostports (
            protocol       TEXT NOT NULL,
            host_port      INTEGER NOT NULL,
            host_ip        TEXT NOT NULL,
            sandbox_id     TEXT NOT NULL,
            pod            TEXT NOT NULL,
            container_port INTEGER NOT NULL,
            PRIMARY KEY (protocol, host_port, host_ip)
        );
        CREATE INDEX network_hostports_by_sandbox ON network_hostports(sandbox_id);
    """),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


class MetadataStore:
    """A thread-safe handle on meta.db. Use `transaction()` for every write."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> MetadataStore:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StartupError(f"{path}: cannot open the metadata database: {e}") from None
        if result != "ok":
            conn.close()
            raise StartupError(f"{path}: metadata database failed its integrity check: {result}")
        store = cls(conn, path)
        store._migrate()
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StartupError(f"{self.path}: schema version {current} was written by a newer cri-shim "
                               f"(this one knows up to {SCHEMA_VERSION}); refusing to open it")
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            with self.transaction() as conn:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
            log.info("metadata store %s migrated to schema version %d", self.path, version)

    # settings: small runtime-wide values (e.g. the pod CIDR kubelet pushes)
    def get_setting(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO settings(key, value) VALUES(?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
