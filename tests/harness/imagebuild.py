"""A deterministic OCI image builder for tests: layers from in-memory trees, manifests, indexes, push.

Everything here is built from plain values, so identical inputs always give
identical bytes and therefore identical digests: tar headers carry fixed
mtimes and empty user/group names, gzip is written with mtime 0 and no file
name, zstd goes through libzstd's one-shot API at a fixed level, and JSON
documents are serialised with sorted keys and no whitespace.

Typical use:

    layer = Layer(tree([file("bin/hello", b"#!/bin/sh\\necho hi\\n", mode=0o755)]))
    image = build_image(ImageSpec(layers=(layer,), config=ImageConfig(cmd=("/bin/hello",))))
    index = build_index([image])                      # OCI index with one linux/amd64 entry
    write_layout(tmp / "layout", {"latest": index})   # an OCI image layout directory
    push(index, "127.0.0.1:5000", "library/hello", "latest")

The entry helpers (`file`, `dir_`, `symlink`, `hardlink`, `chardev`, ...) take
paths verbatim: nothing is normalised, so tests can also write hostile
archives (absolute names, `..`, links pointing anywhere) with the same tools.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import enum
import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

# 2024-01-01T00:00:00Z: a fixed, non-zero time so mtimes survive tools that treat 0 as "unset".
DEFAULT_MTIME = 1704067200
DEFAULT_CREATED = "2024-01-01T00:00:00Z"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST})
REF_NAME = "org.opencontainers.image.ref.name"


# ---------------------------------------------------------------- tar entries


class Kind(enum.Enum):
    FILE = tarfile.REGTYPE
    DIR = tarfile.DIRTYPE
    SYMLINK = tarfile.SYMTYPE
    HARDLINK = tarfile.LNKTYPE
    CHAR = tarfile.CHRTYPE
    BLOCK = tarfile.BLKTYPE
    FIFO = tarfile.FIFOTYPE


DEFAULT_MODES = {Kind.FILE: 0o644, Kind.DIR: 0o755, Kind.SYMLINK: 0o777, Kind.HARDLINK: 0o644,
                 Kind.CHAR: 0o666, Kind.BLOCK: 0o660, Kind.FIFO: 0o644}


@dataclass(frozen=True)
class Entry:
    """One tar member. `path` and `link` are written exactly as given."""

    path: str
    kind: Kind
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = DEFAULT_MTIME
    major: int = 0
    minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.path)
        info.type = self.kind.value
        info.mode = DEFAULT_MODES[self.kind] if self.mode is None else self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.size = len(self.data) if self.kind is Kind.FILE else 0
        info.linkname = self.link
        info.devmajor, info.devminor = self.major, self.minor
        # Binary xattr values (e.g. security.capability) travel as surrogate-escaped
        # str; tarfile then writes the PAX header with hdrcharset=BINARY.
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in sorted(self.xattrs.items())}
        return info


def file(path: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: float = DEFAULT_MTIME, xattrs: Mapping[str, bytes] | None = None) -> Entry:
    return Entry(path, Kind.FILE, data=data, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs or {})


def dir_(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: float = DEFAULT_MTIME,
         xattrs: Mapping[str, bytes] | None = None) -> Entry:
    return Entry(path, Kind.DIR, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs or {})


def symlink(path: str, target: str, uid: int = 0, gid: int = 0, mtime: float = DEFAULT_MTIME) -> Entry:
    return Entry(path, Kind.SYMLINK, link=target, uid=uid, gid=gid, mtime=mtime)


def hardlink(path: str, target: str, mode: int | None = None) -> Entry:
    # containerd and Docker chmod the linked inode to the link header's mode, so a link to an executable must
    # carry the executable's mode (GNU tar writes the file's mode in link headers).
    return Entry(path, Kind.HARDLINK, link=target, mode=mode)


def chardev(path: str, major: int, minor: int, mode: int = 0o666, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, Kind.CHAR, major=major, minor=minor, mode=mode, uid=uid, gid=gid)


def blockdev(path: str, major: int, minor: int, mode: int = 0o660) -> Entry:
    return Entry(path, Kind.BLOCK, major=major, minor=minor, mode=mode)


def fifo(path: str, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FIFO, mode=mode)


def whiteout(path: str) -> Entry:
    """The OCI whiteout for `path`: an empty file named `.wh.<base>` next to it."""
    parent, _, base = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(dirpath: str) -> Entry:
    """The OCI opaque marker: hides everything lower layers had under `dirpath`."""
    d = dirpath.strip("/")
    return file(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq")


def tree(entries: Iterable[Entry], dir_mtime: float = DEFAULT_MTIME) -> tuple[Entry, ...]:
    """Entries sorted parents-first (a hardlink right after its target), adding a 0755 root-owned dir
    for every missing parent."""
    given = {e.path.strip("/"): e for e in entries}
    out = dict(given)
    for p in given:
        parts = p.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            out.setdefault(parent, dir_(parent, mtime=dir_mtime))

    def key(path: str, depth: int = 0) -> list[str]:
        # A hardlink must follow the entry it links to: it sorts right after its target.
        e = out[path]
        target = e.link.strip("/")
        if e.kind is Kind.HARDLINK and target in out and depth < 8:
            return [*key(target, depth + 1), "\0" + path]
        return path.split("/")

    return tuple(out[p] for p in sorted(out, key=key))


class TarFormat(enum.Enum):
    PAX = tarfile.PAX_FORMAT
    GNU = tarfile.GNU_FORMAT
    USTAR = tarfile.USTAR_FORMAT


def write_tar(entries: Iterable[Entry], out: BinaryIO, fmt: TarFormat = TarFormat.PAX) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=fmt.value, encoding="utf-8") as tf:
        for e in entries:
            tf.addfile(e.tarinfo(), io.BytesIO(e.data) if e.kind is Kind.FILE else None)


def tar_bytes(entries: Iterable[Entry], fmt: TarFormat = TarFormat.PAX) -> bytes:
    buf = io.BytesIO()
    write_tar(entries, buf, fmt)
    return buf.getvalue()


# ---------------------------------------------------------------- compression


class Compression(enum.Enum):
    NONE = ""
    GZIP = "+gzip"
    ZSTD = "+zstd"


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    buf = io.BytesIO()
    # mtime=0 and an empty file name keep the gzip header byte-identical run to run.
    with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def zstd_bytes(data: bytes, level: int = 3) -> bytes:
    """One zstd frame through libzstd (Debian libzstd1); the frame records the content size."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    lib = ctypes.CDLL(name)
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compress.restype = ctypes.c_size_t
    lib.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    cap = lib.ZSTD_compressBound(len(data))
    dst = ctypes.create_string_buffer(cap)
    n = lib.ZSTD_compress(dst, cap, data, len(data), level)
    if lib.ZSTD_isError(n):
        raise RuntimeError(f"ZSTD_compress failed ({n})")
    return dst.raw[:n]


def zstd_decompress(data: bytes) -> bytes:
    """Inverse of zstd_bytes, for frames that record their content size (all frames zstd_bytes writes)."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    lib = ctypes.CDLL(name)
    lib.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
    lib.ZSTD_getFrameContentSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    size = lib.ZSTD_getFrameContentSize(data, len(data))
    if size >= (1 << 64) - 2:  # ZSTD_CONTENTSIZE_UNKNOWN / ZSTD_CONTENTSIZE_ERROR
        raise ValueError("not a zstd frame with a recorded content size")
    dst = ctypes.create_string_buffer(max(size, 1))
    n = lib.ZSTD_decompress(dst, size, data, len(data))
    if lib.ZSTD_isError(n):
        raise ValueError(f"ZSTD_decompress failed ({n})")
    return dst.raw[:n]


def decompress(data: bytes, media_type: str) -> bytes:
    """The tar inside a layer blob, by its media type (OCI or Docker)."""
    if media_type.endswith("gzip"):
        return gzip.decompress(data)
    if media_type.endswith("zstd"):
        return zstd_decompress(data)
    return data


def compress(data: bytes, how: Compression) -> bytes:
    if how is Compression.GZIP:
        return gzip_bytes(data)
    if how is Compression.ZSTD:
        return zstd_bytes(data)
    return data


# ---------------------------------------------------------------- blobs and images


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True)
class Layer:
    entries: tuple[Entry, ...]
    compression: Compression = Compression.GZIP
    fmt: TarFormat = TarFormat.PAX


@dataclass(frozen=True)
class ImageConfig:
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    working_dir: str = ""
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    platform: Platform = Platform()
    created: str = DEFAULT_CREATED

    def json(self, diff_ids: Sequence[str]) -> dict[str, Any]:
        cfg: dict[str, Any] = {"Env": list(self.env)}
        optional: dict[str, Any] = {
            "User": self.user, "Entrypoint": list(self.entrypoint), "Cmd": list(self.cmd),
            "WorkingDir": self.working_dir, "StopSignal": self.stop_signal,
            "Volumes": {v: {} for v in self.volumes}, "ExposedPorts": {p: {} for p in self.exposed_ports},
            "Labels": dict(self.labels),
        }
        cfg.update({k: v for k, v in optional.items() if v})
        return {"created": self.created, **self.platform.json(), "config": cfg,
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                "history": [{"created": self.created, "created_by": "cri-shim tests/harness/imagebuild"}
                            for _ in diff_ids]}


@dataclass(frozen=True)
class ImageSpec:
    layers: tuple[Layer, ...]
    config: ImageConfig = ImageConfig()


@dataclass(frozen=True)
class Image:
    """A built image: `top` is its manifest or index; `blobs` holds every blob it references (and `top`)."""

    top: Blob
    blobs: Mapping[str, Blob]
    platform: Platform | None = None   # set for single-platform manifests

    @property
    def digest(self) -> str:
        return self.top.digest

    @property
    def media_type(self) -> str:
        return self.top.media_type

    def manifest_json(self) -> dict[str, Any]:
        return json.loads(self.top.data)  # type: ignore[no-any-return]

    def config_blob(self, platform: Platform | None = None) -> Blob:
        """The image config (of the manifest for `platform`, or the first one, for indexes)."""
        return self.blobs[self.manifest_for(platform)["config"]["digest"]]

    def manifest_for(self, platform: Platform | None = None) -> dict[str, Any]:
        """The image manifest (of `platform`, or the first entry, when this is an index)."""
        doc = self.manifest_json()
        if self.media_type in (OCI_INDEX, DOCKER_LIST):
            entries = doc["manifests"]
            if platform is not None:
                entries = [m for m in entries if m.get("platform") == platform.json()]
            doc = json.loads(self.blobs[entries[0]["digest"]].data)
        return doc

    def layer_blobs(self, platform: Platform | None = None) -> list[Blob]:
        return [self.blobs[d["digest"]] for d in self.manifest_for(platform)["layers"]]

    @property
    def config_digest(self) -> str:
        return self.config_blob().digest


def build_layer(layer: Layer, docker: bool = False) -> tuple[Blob, str]:
    """The layer blob and its diff_id (digest of the uncompressed tar)."""
    raw = tar_bytes(layer.entries, layer.fmt)
    if docker:
        if layer.compression is Compression.ZSTD:
            raise ValueError("Docker schema2 manifests carry gzip or uncompressed layers only")
        media = DOCKER_LAYER + (".gzip" if layer.compression is Compression.GZIP else "")
    else:
        media = OCI_LAYER + layer.compression.value
    return Blob(media, compress(raw, layer.compression)), sha256_digest(raw)


LayerCache = dict[tuple[int, bool], tuple[Layer, Blob, str]]


def build_image(spec: ImageSpec, docker: bool = False, cache: LayerCache | None = None) -> Image:
    """One image manifest (OCI by default, Docker schema2 with docker=True) with its config and layers.

    `cache` (owned by the caller) lets images sharing a Layer object compress it only once.
    """
    def built_layer(layer: Layer) -> tuple[Blob, str]:
        if cache is None:
            return build_layer(layer, docker)
        key = (id(layer), docker)
        if key not in cache or cache[key][0] is not layer:
            cache[key] = (layer, *build_layer(layer, docker))
        return cache[key][1], cache[key][2]

    built = [built_layer(layer) for layer in spec.layers]
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, canonical_json(spec.config.json([d for _, d in built])))
    media = DOCKER_MANIFEST if docker else OCI_MANIFEST
    doc = {"schemaVersion": 2, "mediaType": media,
           "config": config.descriptor(), "layers": [b.descriptor() for b, _ in built]}
    top = Blob(media, canonical_json(doc))
    blobs = {b.digest: b for b in (config, *(b for b, _ in built), top)}
    return Image(top, blobs, spec.config.platform)


def build_index(images: Sequence[Image], docker: bool = False,
                annotations: Mapping[str, str] | None = None) -> Image:
    """An OCI index (or Docker manifest list) over single-platform images, one platform entry each."""
    entries = []
    blobs: dict[str, Blob] = {}
    for img in images:
        if img.platform is None:
            raise ValueError("an index entry must be a single-platform image manifest")
        entries.append(img.top.descriptor(platform=img.platform.json()))
        blobs.update(img.blobs)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
                           "manifests": entries}
    if annotations:
        doc["annotations"] = dict(annotations)
    top = Blob(doc["mediaType"], canonical_json(doc))
    blobs[top.digest] = top
    return Image(top, blobs)


# ---------------------------------------------------------------- OCI layout


def write_layout(root: Path, images: Mapping[str, Image]) -> Path:
    """An OCI image layout at `root`: blobs/sha256/*, oci-layout and index.json naming each image by ref."""
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    manifests = []
    for ref, img in sorted(images.items()):
        for b in img.blobs.values():
            p = blob_dir / b.digest.split(":", 1)[1]
            if not p.exists():
                p.write_bytes(b.data)
        manifests.append(img.top.descriptor(annotations={REF_NAME: ref}))
    (root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                      "manifests": manifests}))
    return root


def read_layout(root: Path, ref: str) -> Image:
    """The image named `ref` in an OCI layout written by `write_layout` (or any tool)."""
    index = json.loads((root / "index.json").read_bytes())
    matches = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == ref]
    if not matches:
        raise KeyError(f"{root}: no image named {ref!r}")
    blobs: dict[str, Blob] = {}

    def load(desc: Mapping[str, Any]) -> Blob:
        data = (root / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes()
        blob = Blob(desc["mediaType"], data)
        blobs[blob.digest] = blob
        if blob.media_type in MANIFEST_TYPES:
            doc = json.loads(data)
            for child in (*doc.get("manifests", ()), *filter(None, [doc.get("config")]), *doc.get("layers", ())):
                load(child)
        return blob

    top = load(matches[0])
    return Image(top, blobs)


# ---------------------------------------------------------------- push (distribution API)


class PushError(Exception):
    pass


@dataclass
class _Registry:
    """The few distribution-API calls a push needs, with Basic or Bearer auth on a 401 challenge."""

    base: str
    repo: str
    auth: tuple[str, str] | None
    header: str = ""

    def call(self, method: str, url: str, data: bytes | None = None,
             headers: Mapping[str, str] | None = None, ok: Iterable[int] = (200, 201, 202, 204)) -> tuple[int, Any]:
        h = dict(headers or {})
        for attempt in range(2):
            if self.header:
                h["Authorization"] = self.header
            req = urllib.request.Request(urllib.parse.urljoin(self.base, url), data=data, method=method, headers=h)
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
                    return resp.status, resp.headers
            except urllib.error.HTTPError as e:
                body = e.read()[:500]
                if e.code == 401 and attempt == 0 and self._authorize(e.headers.get("WWW-Authenticate", "")):
                    continue
                if e.code in tuple(ok):
                    return e.code, e.headers
                raise PushError(f"{method} {url}: HTTP {e.code}: {body.decode(errors='replace')}") from None
        raise PushError(f"{method} {url}: still unauthorized after authenticating")

    def _authorize(self, challenge: str) -> bool:
        if self.auth is None:
            return False
        scheme, _, params = challenge.partition(" ")
        basic = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        if scheme.lower() == "basic":
            self.header = basic
            return True
        if scheme.lower() == "bearer":
            fields = dict(p.split("=", 1) for p in params.replace('"', "").split(",") if "=" in p)
            query = {k: v for k, v in fields.items() if k in ("service", "scope")}
            query.setdefault("scope", f"repository:{self.repo}:pull,push")
            req = urllib.request.Request(fields["realm"] + "?" + urllib.parse.urlencode(query),
                                         headers={"Authorization": basic})
            with urllib.request.urlopen(req, timeout=30) as resp:
                tok = json.loads(resp.read())
            self.header = "Bearer " + (tok.get("token") or tok["access_token"])
            return True
        return False

    def has_blob(self, digest: str) -> bool:
        status, _ = self.call("HEAD", f"/v2/{self.repo}/blobs/{digest}", ok=(200, 404))
        return status == 200

    def upload_blob(self, blob: Blob, chunk_size: int | None) -> None:
        _, h = self.call("POST", f"/v2/{self.repo}/blobs/uploads/", data=b"")
        location = h["Location"]
        if chunk_size:
            for start in range(0, blob.size, chunk_size):
                chunk = blob.data[start:start + chunk_size]
                _, h = self.call("PATCH", location, data=chunk, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(chunk) - 1}"})
                location = h["Location"]
            body = b""
        else:
            body = blob.data
        sep = "&" if "?" in location else "?"
        self.call("PUT", location + sep + urllib.parse.urlencode({"digest": blob.digest}), data=body,
                  headers={"Content-Type": "application/octet-stream"})

    def put_manifest(self, blob: Blob, ref: str) -> str:
        _, h = self.call("PUT", f"/v2/{self.repo}/manifests/{ref}", data=blob.data,
                         headers={"Content-Type": blob.media_type})
        got = h.get("Docker-Content-Digest", blob.digest)
        if got != blob.digest:
            raise PushError(f"registry stored manifest as {got}, expected {blob.digest}")
        return str(got)


def _children(blob: Blob) -> list[str]:
    doc = json.loads(blob.data)
    return [d["digest"] for d in (*doc.get("manifests", ()), *filter(None, [doc.get("config")]),
                                  *doc.get("layers", ()))]


def push(image_or_layout: Image | Path, registry: str, repo: str, tag_or_digest: str, *,
         insecure: bool = True, auth: tuple[str, str] | None = None, chunk_size: int | None = None,
         layout_ref: str | None = None) -> str:
    """Push an image (or the image `layout_ref`/`tag_or_digest` of an OCI layout) and return its digest.

    `registry` is host:port (plain HTTP when `insecure`) or a URL such as http://127.0.0.1:5000.
    Blobs already in the registry are skipped; with `chunk_size`, blobs go up
    in PATCH chunks instead of one monolithic PUT. Child manifests of an index
    are pushed by digest before the index is put under `tag_or_digest`.
    """
    image = (read_layout(image_or_layout, layout_ref or tag_or_digest)
             if isinstance(image_or_layout, Path) else image_or_layout)
    if "://" in registry:  # a URL: its scheme decides, e.g. "http://127.0.0.1:5000"
        base = registry.rstrip("/")
    else:
        base = f"{'http' if insecure else 'https'}://{registry}"
    reg = _Registry(base, repo, auth)

    def push_tree(blob: Blob, ref: str | None) -> None:
        for d in _children(blob):
            child = image.blobs[d]
            if child.media_type in MANIFEST_TYPES:
                push_tree(child, None)
            elif not reg.has_blob(d):
                reg.upload_blob(child, chunk_size)
        reg.put_manifest(blob, ref or blob.digest)

    push_tree(image.top, tag_or_digest)
    return image.digest
