"""Image metadata: what was pulled, under which names, and who uses it.

Persisted in meta.db (tables `images`, `image_names`, `image_users`,
`snapshots`; migration in cri_shim/store/db.py) and mirrored in memory, so
ImageStatus and ListImages never touch the disk. Every change is written to
SQLite first and applied to memory second, under one lock.

- An image is its config digest (the image id). Its record lists the layers
  (blob digest, diff_id, chain id) and every other blob that belongs to it
  (indexes, manifests, the config), which is what garbage collection keeps.
- A name is `repo:tag` or `repo@digest`; each points at one image. Pulling a
  tag that moved re-points the name; the old image stays (untagged) until
  it is removed.
- An image user is a container; it keeps the image's snapshots on disk even
  after the image itself was removed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from cri_shim.images.manifest import ImageConfig
from cri_shim.images.snapshots import Usage
from cri_shim.store.db import MetadataStore
from cri_shim.types import ImageId


@dataclass(frozen=True)
class LayerRecord:
    digest: str          # compressed blob digest
    media_type: str
    size: int
    diff_id: str
    chain_id: str
    unpacked: bool       # False for layers stored but not unpacked here (Windows layers on Linux)


@dataclass(frozen=True)
class ImageRecord:
    id: ImageId
    config: ImageConfig
    layers: tuple[LayerRecord, ...]
    documents: tuple[str, ...]   # digests of the config and of every index/manifest this image was pulled by
    document_bytes: int = 0      # their total size
    pulled_at: int = 0           # unix ns of the first pull

    @property
    def blobs(self) -> frozenset[str]:
        return frozenset(self.documents) | {layer.digest for layer in self.layers}

    @property
    def snapshot_ids(self) -> tuple[str, ...]:
        return tuple(layer.chain_id for layer in self.layers if layer.unpacked)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ImageRecord:
        raw: dict[str, Any] = json.loads(text)
        cfg = raw["config"]
        config = ImageConfig(**{**cfg, **{k: tuple(cfg[k]) for k in (
            "diff_ids", "entrypoint", "cmd", "env", "volumes", "exposed_ports")}})
        layers = tuple(LayerRecord(**layer) for layer in raw["layers"])
        return ImageRecord(id=ImageId(raw["id"]), config=config, layers=layers, documents=tuple(raw["documents"]),
                           document_bytes=raw.get("document_bytes", 0), pulled_at=raw.get("pulled_at", 0))


@dataclass(frozen=True)
class ImageUser:
    container_id: str
    image_id: ImageId
    snapshot_ids: tuple[str, ...]


@dataclass
class _Index:
    images: dict[ImageId, ImageRecord] = field(default_factory=dict)
    names: dict[str, ImageId] = field(default_factory=dict)
    users: dict[str, ImageUser] = field(default_factory=dict)
    snapshots: dict[str, Usage] = field(default_factory=dict)


class ImageMetadata:
    """Thread-safe: every method takes the lock; readers get immutable records."""

    def __init__(self, db: MetadataStore) -> None:
        self._db = db
        self._lock = threading.RLock()
        self._index = _Index()

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def load(self) -> None:
        index = _Index()
        for row in self._db.query("SELECT body FROM images"):
            record = ImageRecord.from_json(row["body"])
            index.images[record.id] = record
        for row in self._db.query("SELECT name, image_id FROM image_names"):
            index.names[row["name"]] = ImageId(row["image_id"])
        for row in self._db.query("SELECT container_id, image_id, snapshot_ids FROM image_users"):
            index.users[row["container_id"]] = ImageUser(row["container_id"], ImageId(row["image_id"]),
                                                         tuple(json.loads(row["snapshot_ids"])))
        for row in self._db.query("SELECT chain_id, used_bytes, inodes FROM snapshots"):
            index.snapshots[row["chain_id"]] = Usage(row["used_bytes"], row["inodes"])
        with self._lock:
            self._index = index

    # ---------------------------------------------------------------- reads

    def get(self, image_id: ImageId) -> ImageRecord | None:
        with self._lock:
            return self._index.images.get(image_id)

    def by_name(self, name: str) -> ImageRecord | None:
        with self._lock:
            image_id = self._index.names.get(name)
            return self._index.images.get(image_id) if image_id else None

    def by_id_prefix(self, prefix: str) -> list[ImageRecord]:
        with self._lock:
            return [r for i, r in self._index.images.items() if i.startswith(prefix)]

    def names_of(self, image_id: ImageId) -> list[str]:
        with self._lock:
            return sorted(n for n, i in self._index.names.items() if i == image_id)

    def all(self) -> list[tuple[ImageRecord, list[str]]]:
        with self._lock:
            names: dict[ImageId, list[str]] = {}
            for name, image_id in self._index.names.items():
                names.setdefault(image_id, []).append(name)
            return [(r, sorted(names.get(r.id, []))) for r in self._index.images.values()]

    def snapshot_usage(self, chain_id: str) -> Usage | None:
        with self._lock:
            return self._index.snapshots.get(chain_id)

    def all_snapshot_usage(self) -> dict[str, Usage]:
        with self._lock:
            return dict(self._index.snapshots)

    def user(self, container_id: str) -> ImageUser | None:
        with self._lock:
            return self._index.users.get(container_id)

    def referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, snapshot chain ids) that images and image users keep."""
        with self._lock:
            blobs: set[str] = set()
            snaps: set[str] = set()
            for record in self._index.images.values():
                blobs |= record.blobs
                snaps.update(record.snapshot_ids)
            for user in self._index.users.values():
                snaps.update(user.snapshot_ids)
            return blobs, snaps

    # ---------------------------------------------------------------- writes

    def record_pull(self, record: ImageRecord, names: list[str], snapshots: dict[str, Usage]) -> ImageRecord:
        """Add (or extend) an image and point `names` at it, in one transaction. Returns the stored record."""
        with self._lock:
            old = self._index.images.get(record.id)
            if old is not None:
                documents = tuple(dict.fromkeys(old.documents + record.documents))
                record = ImageRecord(id=record.id, config=record.config, layers=record.layers, documents=documents,
                                     document_bytes=max(old.document_bytes, record.document_bytes),
                                     pulled_at=old.pulled_at)
            with self._db.transaction() as conn:
                conn.execute("INSERT INTO images(id, body) VALUES(?, ?) "
                             "ON CONFLICT(id) DO UPDATE SET body = excluded.body", (record.id, record.to_json()))
                for name in names:
                    conn.execute("INSERT INTO image_names(name, image_id) VALUES(?, ?) "
                                 "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id", (name, record.id))
                for chain_id, usage in snapshots.items():
                    conn.execute("INSERT INTO snapshots(chain_id, used_bytes, inodes) VALUES(?, ?, ?) "
                                 "ON CONFLICT(chain_id) DO UPDATE SET used_bytes = excluded.used_bytes, "
                                 "inodes = excluded.inodes", (chain_id, usage.bytes, usage.inodes))
            self._index.images[record.id] = record
            for name in names:
                self._index.names[name] = record.id
            self._index.snapshots.update(snapshots)
            return record

    def remove_image(self, image_id: ImageId) -> bool:
        """Forget the image and every name pointing at it; False if it was already gone."""
        with self._lock:
            if image_id not in self._index.images:
                return False
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM image_names WHERE image_id = ?", (image_id,))
                conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
            del self._index.images[image_id]
            for name in [n for n, i in self._index.names.items() if i == image_id]:
                del self._index.names[name]
            return True

    def record_snapshots(self, usage: dict[str, Usage]) -> None:
        with self._lock:
            with self._db.transaction() as conn:
                conn.executemany("INSERT OR REPLACE INTO snapshots(chain_id, used_bytes, inodes) VALUES(?, ?, ?)",
                                 [(c, u.bytes, u.inodes) for c, u in usage.items()])
            self._index.snapshots.update(usage)

    def forget_snapshots(self, chain_ids: set[str]) -> None:
        with self._lock:
            with self._db.transaction() as conn:
                conn.executemany("DELETE FROM snapshots WHERE chain_id = ?", [(c,) for c in chain_ids])
            for c in chain_ids:
                self._index.snapshots.pop(c, None)

    def add_user(self, user: ImageUser) -> None:
        with self._lock:
            with self._db.transaction() as conn:
                conn.execute("INSERT INTO image_users(container_id, image_id, snapshot_ids) VALUES(?, ?, ?) "
                             "ON CONFLICT(container_id) DO UPDATE SET image_id = excluded.image_id, "
                             "snapshot_ids = excluded.snapshot_ids",
                             (user.container_id, user.image_id, json.dumps(list(user.snapshot_ids))))
            self._index.users[user.container_id] = user

    def remove_user(self, container_id: str) -> bool:
        with self._lock:
            if container_id not in self._index.users:
                return False
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM image_users WHERE container_id = ?", (container_id,))
            del self._index.users[container_id]
            return True
