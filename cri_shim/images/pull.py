"""Pulling an image: resolve, pick the platform, fetch the config, fetch and unpack the layers, record.

Concurrency model:
- A pull job runs on a thread of its own. Concurrent PullImage calls for the
  same reference (and the same credentials) wait on the same job; the job is
  cancelled only when every caller has left (deadline or cancellation).
- Each layer is a transfer on the layer pool (`images.max_concurrent_downloads`
  threads): download, hash, store, decompress and unpack in one stream.
  Transfers are shared by every job that needs the same layer, with the same
  rule: cancelled when no job waits for it any more.
- Nothing is visible until the end: blobs and snapshots are committed by
  rename once verified, and the image record is written last, in one
  transaction. A job that fails or is cancelled leaves only unreferenced
  blobs and snapshots behind, which the garbage collection run right after
  deletes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cri_shim.errors import CriError, DeadlineExceeded, FailedPrecondition
from cri_shim.images import auth, hosts, manifest, platform
from cri_shim.images.auth import Credentials
from cri_shim.images.cancel import Cancelled, CancelToken
from cri_shim.images.content import ContentStore, Ingest
from cri_shim.images.hosts import RegistryHost
from cri_shim.images.leases import Leases
from cri_shim.images.manifest import Descriptor, ImageConfig, Platform
from cri_shim.images.metadata import ImageMetadata, ImageRecord, LayerRecord
from cri_shim.images.reference import Reference
from cri_shim.images.registry import RegistryClient
from cri_shim.images.snapshots import SnapshotStore, Usage, chain_ids, disk_usage
from cri_shim.images.streams import ClosableSource, CompressedReader, Decompressor
from cri_shim.types import ImageId
from runtime.base import RuntimeFailure

log = logging.getLogger(__name__)

Unpacker = Callable[[BinaryIO, Path], object]
"""runtime.linux.unpack.unpack_layer: extract an uncompressed tar stream into an empty directory."""


@dataclass(frozen=True)
class LayeredUnpacker:
    """An unpacker that builds each layer on top of its parents' snapshot directories (Windows layers on a
    Windows node: the import needs the parent layer folders on disk). `unpack(stream, target, parents)`, parents
    immediate parent first, base last. The puller unpacks such an image's layers in order: each layer's transfer
    waits for the one below it before it downloads."""

    unpack: Callable[[BinaryIO, Path, tuple[Path, ...]], object]


@dataclass(frozen=True)
class PullSettings:
    config_path: str = ""             # hosts.toml directory
    credentials_file: str = ""
    max_concurrent_downloads: int = 3
    progress_timeout: float = 300.0   # 0: none
    platform: Platform = field(default_factory=platform.host)
    max_layer_bytes: int = 0          # uncompressed; 0: no limit here (the unpacker has its own budget)


@dataclass
class _Shared:
    """Work shared by several waiters; cancelled when the last one leaves."""

    key: tuple[str, ...]
    token: CancelToken
    waiters: int = 0
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True)
class _Layer:
    desc: Descriptor
    diff_id: str
    chain_id: str
    unpack: bool
    parents: tuple[str, ...] = ()   # chain ids of the layers below, immediate parent first


class Puller:
    def __init__(self, content: ContentStore, snapshots: SnapshotStore, metadata: ImageMetadata, leases: Leases,
                 settings: PullSettings, unpacker: Unpacker | LayeredUnpacker,
                 collect_garbage: Callable[[], None]) -> None:
        self.content, self.snapshots, self.metadata, self.leases = content, snapshots, metadata, leases
        self.settings = settings
        # One call shape for both kinds; `_layered`: each layer waits for its parents' snapshots (see _transfer).
        self._layered = isinstance(unpacker, LayeredUnpacker)
        self._unpack: Callable[[BinaryIO, Path, tuple[Path, ...]], object] = (
            unpacker.unpack if isinstance(unpacker, LayeredUnpacker)
            else lambda stream, target, _parents: unpacker(stream, target))
        self._collect_garbage = collect_garbage
        self._lock = threading.RLock()  # RLock: a future that is already done runs its callback inline
        self._jobs: dict[tuple[str, ...], _Shared] = {}
        self._transfers: dict[tuple[str, ...], _Shared] = {}
        self._job_pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="pull")
        self._layer_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.max_concurrent_downloads), thread_name_prefix="layer")

    def close(self) -> None:
        with self._lock:
            shared = list(self._jobs.values()) + list(self._transfers.values())
        for s in shared:
            s.token.cancel("the daemon is stopping")
        self._job_pool.shutdown(wait=True, cancel_futures=True)
        self._layer_pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------- the async entry point

    async def pull(self, ref: Reference, creds: Credentials | None, timeout: float | None) -> ImageId:
        """Pull `ref`; DeadlineExceeded when `timeout` (the caller's deadline) passes first."""
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"pulling image {ref}: the caller's deadline had already passed")
        key = (str(ref), creds.fingerprint() if creds else "", str(self.settings.platform))
        job = self._join(self._jobs, key, f"pull of {ref}", lambda token: self._job_pool.submit(
            self._run_job, ref, creds, token))
        try:
            waiter = asyncio.wrap_future(job.future)
            waiter.add_done_callback(_consume)
            result: ImageId = await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return result
        except TimeoutError:
            raise DeadlineExceeded(f"pulling image {ref}: the caller's deadline passed before the pull "
                                   "finished") from None
        finally:
            self._leave(self._jobs, job, "every caller of the pull left")

    # ---------------------------------------------------------------- sharing

    def _join(self, table: dict[tuple[str, ...], _Shared], key: tuple[str, ...], what: str,
              start: Callable[[CancelToken], concurrent.futures.Future[Any]]) -> _Shared:
        with self._lock:
            shared = table.get(key)
            if shared is None or shared.token.cancelled:
                shared = _Shared(key=key, token=CancelToken(what))
                shared.future = start(shared.token)
                table[key] = shared
                shared.future.add_done_callback(functools.partial(self._finished, table, shared))
            shared.waiters += 1
            return shared

    def _leave(self, table: dict[tuple[str, ...], _Shared], shared: _Shared, reason: str) -> bool:
        """Stop waiting for `shared`; True if that cancelled it (nobody else was waiting)."""
        with self._lock:
            shared.waiters -= 1
            if shared.waiters > 0 or shared.future.done():
                return False
            if table.get(shared.key) is shared:
                del table[shared.key]
        shared.token.cancel(reason)
        shared.future.cancel()  # still queued for a worker: never starts
        return True

    def _finished(self, table: dict[tuple[str, ...], _Shared], shared: _Shared, _done: object) -> None:
        with self._lock:
            if table.get(shared.key) is shared:
                del table[shared.key]

    # ---------------------------------------------------------------- the job (on a pull thread)

    def _run_job(self, ref: Reference, creds: Credentials | None, token: CancelToken) -> ImageId:
        started = time.monotonic()
        client = RegistryClient(hosts.load(self.settings.config_path, ref.domain), ref,
                                self._credential_source(ref, creds), self.settings.progress_timeout or None)
        ok = False
        try:
            image_id = self._pull(client, ref, token)
            ok = True
            log.info("pulled %s as %s in %.2fs", ref, image_id, time.monotonic() - started)
            return image_id
        except Cancelled:
            log.info("pull of %s cancelled: %s", ref, token.reason)
            raise
        finally:
            client.close()
            if not ok:
                self._collect_garbage()

    def _credential_source(self, ref: Reference, creds: Credentials | None) -> Callable[[RegistryHost],
                                                                                       Credentials | None]:
        file = self.settings.credentials_file

        def source(host: RegistryHost) -> Credentials | None:
            # Credentials from the request belong to the registry the image names, never to a mirror.
            if not host.is_mirror:
                return creds or auth.from_file(file, host.netloc) or auth.from_file(file, ref.domain)
            return auth.from_file(file, host.netloc)

        return source

    def _pull(self, client: RegistryClient, ref: Reference, token: CancelToken) -> ImageId:
        what = f"image {ref}"
        top = client.resolve(token)
        documents = {top.digest: top.data}
        if top.media_type in manifest.INDEX_TYPES:
            index = manifest.parse_index(top.data, what)
            chosen = platform.select(index.manifests, self.settings.platform, what)
            if chosen.media_type and chosen.media_type not in manifest.MANIFEST_TYPES:
                raise FailedPrecondition(f"{what}: the entry for {self.settings.platform} has the unsupported "
                                         f"media type {chosen.media_type!r}")
            fetched = client.fetch_manifest(chosen, token)
            if fetched.media_type not in manifest.MANIFEST_TYPES:
                raise FailedPrecondition(f"{what}: the entry for {self.settings.platform} is not an image manifest")
            documents[fetched.digest] = fetched.data
            image_manifest = manifest.parse_manifest(fetched.data, f"{what}: manifest {fetched.digest}")
        else:
            image_manifest = manifest.parse_manifest(top.data, what)
        config_desc = image_manifest.config
        config_bytes = client.fetch_blob(config_desc, manifest.MAX_CONFIG_BYTES, token, f"{what}: config")
        config = manifest.parse_config(config_bytes, f"{what}: config {config_desc.digest}")
        documents[config_desc.digest] = config_bytes
        if len(config.diff_ids) != len(image_manifest.layers):
            raise FailedPrecondition(f"{what}: the manifest has {len(image_manifest.layers)} layers but the config "
                                     f"lists {len(config.diff_ids)} diff_ids")
        self._check_platform(config, what)
        layers = self._plan(image_manifest.layers, config)
        blobs = [*documents, *(layer.desc.digest for layer in layers)]
        snaps = [layer.chain_id for layer in layers if layer.unpack]
        with self.leases.hold(blobs, snaps):
            usage = self._fetch_layers(client, ref, layers, token)
            for digest, data in documents.items():
                self.content.write(digest, data)
            if usage:
                self.snapshots.sync()
            token.check()  # the last moment to give up without leaving an image behind
            record = ImageRecord(
                id=ImageId(config_desc.digest), config=config, documents=tuple(documents),
                document_bytes=sum(len(d) for d in documents.values()), pulled_at=time.time_ns(),
                layers=tuple(LayerRecord(digest=layer.desc.digest, media_type=layer.desc.media_type,
                                         size=layer.desc.size, diff_id=layer.diff_id, chain_id=layer.chain_id,
                                         unpacked=layer.unpack) for layer in layers))
            names = ([ref.tagged] if ref.tag else []) + [ref.with_digest(top.digest)]
            self.metadata.record_pull(record, names, usage)
        return record.id

    def _check_platform(self, config: ImageConfig, what: str) -> None:
        node = self.settings.platform
        if config.os != node.os or (config.architecture and config.architecture != node.architecture):
            log.warning("%s is built for %s/%s, not for this node (%s)", what, config.os, config.architecture, node)

    def _plan(self, descs: tuple[Descriptor, ...], config: ImageConfig) -> list[_Layer]:
        # Only images of the node's OS are unpacked (the store's unpacker is that OS's: store.unpacker); foreign
        # layers (Windows base layers that may live outside the registry) are stored, never unpacked here.
        native = config.os == self.settings.platform.os
        chains = chain_ids(config.diff_ids)
        return [_Layer(desc=d, diff_id=diff_id, chain_id=chain, unpack=native and not manifest.is_foreign(d),
                       parents=tuple(reversed(chains[:i])))
                for i, (d, diff_id, chain) in enumerate(zip(descs, config.diff_ids, chains))]

    def _fetch_layers(self, client: RegistryClient, ref: Reference, layers: list[_Layer],
                      token: CancelToken) -> dict[str, Usage]:
        joined: list[_Shared] = []
        try:
            for layer in layers:
                key = (layer.desc.digest, layer.chain_id if layer.unpack else "")
                what = f"image {ref}: layer {layer.desc.digest}"
                # Layered unpacking: the transfer below this one must have made its snapshot first.
                below = joined[-1].future if joined and self._layered else None
                start = functools.partial(self._start_transfer, client, layer, what, below)
                joined.append(self._join(self._transfers, key, f"download of layer {layer.desc.digest}", start))
            pending = {s.future for s in joined}
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.25,
                                                        return_when=concurrent.futures.FIRST_EXCEPTION)
                token.check()
                for f in done:
                    if f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
            usage: dict[str, Usage] = {}
            for layer, shared in zip(layers, joined):
                result = shared.future.result()
                if result is not None:
                    usage[layer.chain_id] = result
            return usage
        finally:
            cancelled = [s.future for s in joined if self._leave(self._transfers, s, "no pull needs this layer any more")]
            # Let cancelled transfers finish their cleanup before the leases go and garbage collection runs,
            # so none of them commits a blob or snapshot after the collection looked.
            concurrent.futures.wait(cancelled)

    # ---------------------------------------------------------------- one layer (on a layer thread)

    def _start_transfer(self, client: RegistryClient, layer: _Layer, what: str,
                        below: concurrent.futures.Future[Any] | None,
                        token: CancelToken) -> concurrent.futures.Future[Usage | None]:
        # The pool runs transfers in submission order and a layer's transfer is always submitted after the one
        # below it, so a transfer waiting for `below` never holds the thread `below` needs.
        return self._layer_pool.submit(self._transfer, client, layer, what, below, token)

    def _transfer(self, client: RegistryClient, layer: _Layer, what: str,
                  below: concurrent.futures.Future[Any] | None, token: CancelToken) -> Usage | None:
        """Make sure the layer's blob (and, if unpacked, its snapshot) exist; the new snapshot's usage."""
        token.check()
        need_snapshot = layer.unpack and not self.snapshots.exists(layer.chain_id)
        need_blob = not self.content.exists(layer.desc.digest)
        if not (need_snapshot or need_blob):
            return None
        parents: tuple[Path, ...] = ()
        if need_snapshot and self._layered:
            parents = self._wait_for_parents(layer, below, token, what)
        source: ClosableSource
        if need_blob:
            source = client.open_blob(layer.desc, token, what)
        else:
            source = open(self.content.path(layer.desc.digest), "rb")
        ingest: Ingest | None = self.content.ingest() if need_blob else None
        temp: Path | None = None
        try:
            compressed = CompressedReader(source, ingest)
            diff: Decompressor | None = None
            if need_snapshot:
                temp = self.snapshots.new_temp()
                diff = Decompressor(compressed, manifest.layer_compression(layer.desc), self.settings.max_layer_bytes,
                                    what)
                self._extract(diff, temp, parents, compressed, layer, what)
            compressed.drain()
            _verify_blob(compressed, layer.desc, what)
            if diff is not None and diff.digest != layer.diff_id:
                raise FailedPrecondition(f"{what}: the uncompressed layer has diff_id {diff.digest}, "
                                         f"the image config says {layer.diff_id}")
            token.check()
            if ingest is not None:
                ingest.commit(layer.desc.digest)
            if temp is None:
                return None
            usage = disk_usage(temp)
            self.snapshots.commit(temp, layer.chain_id)
            temp = None
            return usage
        finally:
            if ingest is not None:
                ingest.abort()
            if temp is not None:
                self.snapshots.discard(temp)
            source.close()

    def _wait_for_parents(self, layer: _Layer, below: concurrent.futures.Future[Any] | None, token: CancelToken,
                          what: str) -> tuple[Path, ...]:
        """The parents' snapshot directories (immediate parent first), once the transfer below has finished."""
        while below is not None and not below.done():
            concurrent.futures.wait([below], timeout=0.25)
            token.check()
        missing = [chain for chain in layer.parents if not self.snapshots.exists(chain)]
        if missing:
            raise FailedPrecondition(f"{what}: cannot import it before its parent layer (chain {missing[0]}), "
                                     "which was not unpacked on this node")
        return tuple(self.snapshots.path(chain) for chain in layer.parents)

    def _extract(self, diff: Decompressor, temp: Path, parents: tuple[Path, ...], compressed: CompressedReader,
                 layer: _Layer, what: str) -> None:
        try:
            self._unpack(diff, temp, parents)  # type: ignore[arg-type]  # a sequential reader is all unpackers use
            diff.drain()  # the tar's end-of-archive padding, and anything after it, is part of the diff_id
        except (RuntimeFailure, CriError) as e:
            # The unpacker wraps errors of the stream it reads (ours) as their cause.
            cause = e.__cause__ if isinstance(e.__cause__, CriError) else e
            if isinstance(cause, CriError) and not isinstance(cause, FailedPrecondition):
                raise cause from None  # cancelled, network failure, byte budget: already says what happened
            # A corrupt download usually shows up first as a bad tar or gzip stream: report the real cause.
            try:
                compressed.drain()
            except CriError:
                pass
            else:
                _verify_blob(compressed, layer.desc, what)
            message = e.message
            raise FailedPrecondition(message if message.startswith(what) else f"{what}: cannot unpack: {message}") \
                from None


def _verify_blob(compressed: CompressedReader, desc: Descriptor, what: str) -> None:
    if compressed.count != desc.size:
        raise FailedPrecondition(f"{what}: size mismatch: got {compressed.count} bytes, the manifest says {desc.size}")
    if compressed.digest != desc.digest:
        raise FailedPrecondition(f"{what}: digest mismatch: the content has {compressed.digest}, "
                                 f"the manifest says {desc.digest}")


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a waiter's outcome as seen (a waiter that left early never reads it)."""
    if not future.cancelled():
        future.exception()
