"""The image store: the one object the daemon uses for images.

For ImageService (cri_shim/services/image_*.py): `pull`, `find`, `view`,
`list_views`, `remove`, `usage`.

For CreateContainer and friends (the container lifecycle):
- `find(text) -> ImageRecord | None`: an image by id, unique id prefix (>= 12
  hex), `repo:tag` or `repo@digest` (names normalised: `busybox` finds
  `docker.io/library/busybox:latest`).
- `use(text, container_id) -> ContainerImage`: find + register the container
  as a user, atomically (NotFound if the image is not here); the result has
  the id, the repo tag/digest to report, the config (entrypoint, cmd, env,
  working dir, user, stop signal, volumes, os) and the snapshot directories
  lowest first.
- `layers(image_id) -> tuple[str, ...]`: the snapshot directories, lowest first.
- `add_user(image_id, container_id)` / `remove_user(container_id)`: while a
  container uses an image, its snapshots stay on disk even if the image is
  removed; `remove_user` frees them once nothing else needs them.

Garbage collection is by reachability, not counters: a blob or snapshot on
disk that no image, image user or in-flight pull references is deleted.
It runs after a removal, after a failed pull and at startup, so a crash at
any point leaves at most garbage that the next start removes.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cri_shim.config import Config
from cri_shim.errors import FailedPrecondition, NotFound
from cri_shim.images import platform, reference
from cri_shim.images.auth import Credentials
from cri_shim.images.content import ContentStore
from cri_shim.images.leases import Leases
from cri_shim.images.manifest import ImageConfig
from cri_shim.images.metadata import ImageMetadata, ImageRecord, ImageUser
from cri_shim.images.pull import LayeredUnpacker, Puller, PullSettings, Unpacker
from cri_shim.images.snapshots import ZERO, SnapshotStore, Usage, disk_usage
from cri_shim.store.db import MetadataStore
from cri_shim.types import ImageId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageView:
    """What ImageStatus and ListImages report for one image."""

    id: ImageId
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    uid: int | None
    username: str
    pinned: bool
    record: ImageRecord


@dataclass(frozen=True)
class ContainerImage:
    """What CreateContainer needs from an image."""

    id: ImageId
    repo_tag: str                 # the tag the caller named, else the image's first tag, else ""
    repo_digest: str              # the first repo digest, else ""
    config: ImageConfig
    layers: tuple[str, ...]       # snapshot directories (overlay lowerdirs), lowest first


def user_of(config_user: str) -> tuple[int | None, str]:
    """(uid, username) from the config's User: "1002" -> uid; "www-data" -> name; "1003:1004" -> uid 1003."""
    if not config_user:
        return None, ""
    user = config_user.split(":", 1)[0]
    if user.isdigit():
        return int(user), ""
    return None, user


class ImageStore:
    def __init__(self, root: Path, db: MetadataStore, settings: PullSettings,
                 unpacker: Unpacker | LayeredUnpacker, pinned: list[str] | None = None) -> None:
        self.content = ContentStore(root / "content")
        self.snapshots = SnapshotStore(root / "snapshots")
        self.metadata = ImageMetadata(db)
        self.leases = Leases(self.metadata.lock)
        self._gc_lock = threading.Lock()
        self._pinned = _pinned_names(pinned or [])
        self.puller = Puller(self.content, self.snapshots, self.metadata, self.leases, settings, unpacker,
                             self.collect_garbage)

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Prepare the directories, load the metadata, drop what a crash left broken or unreferenced."""
        self.content.prepare()
        self.snapshots.prepare()
        self.metadata.load()
        self._drop_incomplete_images()
        self._measure_unmeasured_snapshots()
        self.collect_garbage()

    def close(self) -> None:
        self.puller.close()

    def _drop_incomplete_images(self) -> None:
        blobs = self.content.digests()
        snaps = self.snapshots.chain_ids()
        for record, names in self.metadata.all():
            missing = [d for d in record.blobs if d not in blobs] + [c for c in record.snapshot_ids if c not in snaps]
            if missing:
                log.warning("image %s (%s) is missing %d blobs/snapshots on disk (%s ...): forgetting it; "
                            "pull it again", record.id, ", ".join(names) or "untagged", len(missing), missing[0])
                self.metadata.remove_image(record.id)

    def _measure_unmeasured_snapshots(self) -> None:
        known = self.metadata.all_snapshot_usage()
        _, referenced = self.metadata.referenced()
        todo = {c: disk_usage(self.snapshots.path(c)) for c in referenced - set(known) if self.snapshots.exists(c)}
        if todo:
            self.metadata.record_snapshots(todo)

    # ---------------------------------------------------------------- pulling

    async def pull(self, text: str, creds: Credentials | None, timeout: float | None) -> ImageId:
        """Pull by reference (or return a local image given by id); the image id."""
        lookup = reference.parse_lookup(text)
        if lookup.reference is None:
            record = self._by_id(lookup.image_id_prefix)
            if record is None:
                raise NotFound(f"image {text} is not on this node, and an image id cannot be pulled: "
                               "pull it by name (repo:tag or repo@digest)")
            return record.id
        return await self.puller.pull(lookup.reference, creds, timeout)

    # ---------------------------------------------------------------- lookups

    def find(self, text: str) -> ImageRecord | None:
        """The image `text` names (id, id prefix, tag or digest reference), or None."""
        lookup = reference.parse_lookup(text)
        if lookup.image_id_prefix:
            record = self._by_id(lookup.image_id_prefix)
            if record is not None or lookup.reference is None:
                return record
        assert lookup.reference is not None
        return self.metadata.by_name(str(lookup.reference))

    def _by_id(self, prefix: str) -> ImageRecord | None:
        matches = self.metadata.by_id_prefix(prefix)
        if len(matches) > 1:
            raise FailedPrecondition(f"image id prefix {prefix} is ambiguous ({len(matches)} images); give more of it")
        return matches[0] if matches else None

    def view(self, record: ImageRecord, names: list[str] | None = None) -> ImageView:
        if names is None:
            names = self.metadata.names_of(record.id)
        tags = tuple(n for n in names if "@" not in n)
        digests = tuple(n for n in names if "@" in n)
        uid, username = user_of(record.config.user)
        pinned = record.id in self._pinned or any(n in self._pinned for n in names)
        return ImageView(id=record.id, repo_tags=tags, repo_digests=digests, size=self._size(record), uid=uid,
                         username=username, pinned=pinned, record=record)

    def list_views(self) -> list[ImageView]:
        return [self.view(record, names) for record, names in self.metadata.all()]

    def _size(self, record: ImageRecord) -> int:
        """On disk: the blobs (compressed layers, config, manifests) plus the unpacked snapshots."""
        snaps = sum((self.metadata.snapshot_usage(c) or ZERO).bytes for c in record.snapshot_ids)
        return record.document_bytes + sum(layer.size for layer in record.layers) + snaps

    def disk_usage(self) -> Usage:
        """What the store uses on disk now (ImageFsInfo; kubelet's image GC and eviction act on it).

        Committed snapshots were measured once when unpacked; everything else
        (blobs, unpacks in progress, files nobody should have put there) is walked.
        """
        known = self.metadata.all_snapshot_usage()
        skip = frozenset(str(self.snapshots.path(c)) for c in known)
        walked = disk_usage(self.content.root, self.snapshots.root, skip=skip)
        measured = sum((u for c, u in known.items() if self.snapshots.exists(c)), ZERO)
        return walked + measured

    # ---------------------------------------------------------------- removal

    def remove(self, text: str) -> bool:
        """Remove the image `text` names with all its names; True if it existed (idempotent)."""
        record = self.find(text)
        if record is None:
            return False
        removed = self.metadata.remove_image(record.id)
        if removed:
            log.info("removed image %s", record.id)
            self.collect_garbage()
        return removed

    def collect_garbage(self) -> None:
        """Delete blobs and snapshots nothing references (images, image users, in-flight pulls)."""
        with self._gc_lock:
            trash: list[Path] = []
            with self.metadata.lock:
                blobs, snaps = self.metadata.referenced()
                leased_blobs, leased_snaps = self.leases.held()
                dead_blobs = self.content.digests() - blobs - leased_blobs
                dead_snaps = self.snapshots.chain_ids() - snaps - leased_snaps
                for digest in dead_blobs:
                    self.content.delete(digest)
                for chain_id in dead_snaps:
                    trash.append(self.snapshots.move_to_trash(chain_id))
                stale = set(self.metadata.all_snapshot_usage()) - snaps - leased_snaps
                if stale:
                    self.metadata.forget_snapshots(stale)
            for path in trash:
                self.snapshots.empty_trash(path)
            if dead_blobs or dead_snaps:
                log.info("garbage collection: removed %d blobs and %d snapshots", len(dead_blobs), len(dead_snaps))

    # ---------------------------------------------------------------- container users

    def layers(self, image_id: ImageId) -> tuple[str, ...]:
        record = self.metadata.get(image_id)
        if record is None:
            raise NotFound(f"image {image_id} not found")
        return self._layer_dirs(record)

    def _layer_dirs(self, record: ImageRecord) -> tuple[str, ...]:
        if not all(layer.unpacked for layer in record.layers):
            raise FailedPrecondition(f"image {record.id} is a {record.config.os} image; its layers are stored "
                                     "but not unpacked on this node")
        return tuple(str(self.snapshots.path(c)) for c in record.snapshot_ids)

    def use(self, text: str, container_id: str) -> ContainerImage:
        """Find the image and register `container_id` as its user, atomically."""
        with self.metadata.lock:
            record = self.find(text)
            if record is None:
                raise NotFound(f"image {text} not found on this node: pull it first")
            self.add_user(record.id, container_id)
            names = self.metadata.names_of(record.id)
        lookup = reference.parse_lookup(text)
        asked = str(lookup.reference) if lookup.reference is not None else ""
        tags = [n for n in names if "@" not in n]
        digests = [n for n in names if "@" in n]
        repo_tag = asked if asked in tags else (tags[0] if tags else "")
        return ContainerImage(id=record.id, repo_tag=repo_tag, repo_digest=digests[0] if digests else "",
                              config=record.config, layers=self._layer_dirs(record))

    def add_user(self, image_id: ImageId, container_id: str) -> None:
        with self.metadata.lock:
            record = self.metadata.get(image_id)
            if record is None:
                raise NotFound(f"image {image_id} not found on this node")
            self.metadata.add_user(ImageUser(container_id=container_id, image_id=image_id,
                                             snapshot_ids=record.snapshot_ids))

    def remove_user(self, container_id: str) -> None:
        if self.metadata.remove_user(container_id):
            self.collect_garbage()


def build(config: Config, db: MetadataStore) -> ImageStore:
    """The daemon's image store, from `[registry]` and `[images]`, opened (recovered) and ready."""
    r, i = config.registry, config.images
    settings = PullSettings(config_path=r.config_path, credentials_file=r.credentials_file,
                            max_concurrent_downloads=i.max_concurrent_downloads,
                            progress_timeout=i.pull_progress_timeout,
                            platform=platform.parse(i.platform) if i.platform else platform.host(),
                            max_layer_bytes=i.max_layer_bytes)
    store = ImageStore(config.root_dir, db, settings, unpacker(settings.platform.os, i.max_layer_bytes),
                       pinned=i.pinned_images)
    store.open()
    return store


def unpacker(os_name: str, max_layer_bytes: int) -> Unpacker | LayeredUnpacker:
    """How a layer becomes a snapshot directory, by the OS of the images this node pulls (the one platform
    switch: the Linux unpacker is imported only when it is chosen, so the daemon imports on Windows).

    linux: an overlay lowerdir (runtime.linux.unpack). windows: a Windows layer folder (Files\\, Hives\\;
    cri_shim.images.windows_layers: imported over its parents on a Windows node, a LayeredUnpacker)."""
    if os_name == "windows":
        from cri_shim.images import windows_layers
        return windows_layers.unpacker(max_layer_bytes)
    from runtime.linux.unpack import UnpackLimits, unpack_layer
    limits = UnpackLimits(max_bytes=max_layer_bytes or UnpackLimits().max_bytes)
    # start_writeback: the disk writes a layer's big files while the pull goes on, so the syncfs()
    # before the image is recorded waits ~5 ms instead of ~100 ms (bench/pull.py, 200 MB image).
    return functools.partial(unpack_layer, limits=limits, start_writeback=True)


def _pinned_names(pinned: list[str]) -> set[str]:
    out: set[str] = set()
    for text in pinned:
        lookup = reference.parse_lookup(text)
        if lookup.reference is not None:
            out.add(str(lookup.reference))
        if lookup.image_id_prefix:
            out.add(lookup.image_id_prefix)
    return out
