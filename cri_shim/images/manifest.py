"""OCI and Docker schema2 documents: indexes, manifests, image configs.

Every document comes from a registry, i.e. from someone else: it is parsed
from bytes with a size cap, every field used is type-checked, and a problem
raises FailedPrecondition naming the document and the field. Nothing here
touches the network or the disk.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from cri_shim.errors import FailedPrecondition, InvalidArgument
from cri_shim.images.reference import validate_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
# What a manifest GET accepts, most preferred first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST_BYTES = 4 << 20   # containerd's MaxManifestSize
MAX_CONFIG_BYTES = 20 << 20    # containerd's limit on JSON it reads from images


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


# layer media type -> (compression, foreign: may live outside the registry, Windows base layers)
LAYER_TYPES: dict[str, tuple[Compression, bool]] = {
    "application/vnd.oci.image.layer.v1.tar": (Compression.NONE, False),
    "application/vnd.oci.image.layer.v1.tar+gzip": (Compression.GZIP, False),
    "application/vnd.oci.image.layer.v1.tar+zstd": (Compression.ZSTD, False),
    "application/vnd.oci.image.layer.nondistributable.v1.tar": (Compression.NONE, True),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": (Compression.GZIP, True),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": (Compression.ZSTD, True),
    "application/vnd.docker.image.rootfs.diff.tar": (Compression.NONE, False),
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (Compression.GZIP, False),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (Compression.GZIP, True),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")
        return text + (f" ({self.os_version})" if self.os_version else "")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of the image config a container needs (OCI image-spec `config` + rootfs)."""

    os: str
    architecture: str
    diff_ids: tuple[str, ...]
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    variant: str = ""
    os_version: str = ""


def _fail(what: str, problem: str) -> FailedPrecondition:
    return FailedPrecondition(f"{what}: {problem}")


def _json(data: bytes, what: str, cap: int) -> dict[str, Any]:
    if len(data) > cap:
        raise _fail(what, f"is {len(data)} bytes, more than the {cap} allowed")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(what, f"is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _fail(what, "is not a JSON object")
    return doc


def _str(doc: dict[str, Any], key: str, what: str, required: bool = False) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise _fail(what, f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise _fail(what, f"field {key!r} must be a string")
    return value


def _str_list(doc: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(what, f"field {key!r} must be a list of strings")
    return tuple(value)


def _keys(doc: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _fail(what, f"field {key!r} must be an object")
    return tuple(sorted(value))


def _platform(raw: Any, what: str) -> Platform | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(what, "field 'platform' must be an object")
    return Platform(os=_str(raw, "os", what), architecture=_str(raw, "architecture", what),
                    variant=_str(raw, "variant", what), os_version=_str(raw, "os.version", what))


def descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise _fail(what, "descriptor is not an object")
    digest = _str(raw, "digest", what, required=True)
    try:
        validate_digest(digest, f"{what}: digest")
    except InvalidArgument as e:
        raise FailedPrecondition(e.message) from None
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _fail(what, f"descriptor {digest} has no valid 'size'")
    return Descriptor(media_type=_str(raw, "mediaType", what), digest=digest, size=size,
                      platform=_platform(raw.get("platform"), what), urls=_str_list(raw, "urls", what))


def media_type_of(data: bytes, header_type: str, what: str) -> str:
    """The document's media type: its own `mediaType`, else the Content-Type, else guessed from its fields."""
    doc = _json(data, what, MAX_MANIFEST_BYTES)
    declared = _str(doc, "mediaType", what)
    if declared:
        return declared
    header_type = header_type.split(";")[0].strip()
    if header_type in INDEX_TYPES + MANIFEST_TYPES + DOCKER_SCHEMA1:
        return header_type
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc and "config" in doc:
        return OCI_MANIFEST
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    return header_type or "unknown"


def check_supported(media_type: str, what: str) -> None:
    if media_type in DOCKER_SCHEMA1:
        raise _fail(what, "is a Docker schema 1 manifest, which is deprecated and not supported; "
                          "re-push the image with a current client (schema 2 or OCI)")
    if media_type not in INDEX_TYPES + MANIFEST_TYPES:
        raise _fail(what, f"has the unsupported media type {media_type!r}")


def parse_index(data: bytes, what: str) -> Index:
    doc = _json(data, what, MAX_MANIFEST_BYTES)
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise _fail(what, "field 'manifests' must be a list")
    items = tuple(descriptor(m, f"{what}: manifests[{i}]") for i, m in enumerate(raw))
    return Index(media_type=_str(doc, "mediaType", what) or OCI_INDEX, manifests=items)


def parse_manifest(data: bytes, what: str) -> Manifest:
    doc = _json(data, what, MAX_MANIFEST_BYTES)
    config = descriptor(doc.get("config"), f"{what}: config")
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise _fail(what, f"config has the unsupported media type {config.media_type!r} (not a container image)")
    if config.size > MAX_CONFIG_BYTES:
        raise _fail(what, f"config is {config.size} bytes, more than the {MAX_CONFIG_BYTES} allowed")
    raw = doc.get("layers")
    if not isinstance(raw, list):
        raise _fail(what, "field 'layers' must be a list")
    layers = tuple(descriptor(m, f"{what}: layers[{i}]") for i, m in enumerate(raw))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise _fail(what, f"layers[{i}] ({layer.digest}) has the unsupported media type {layer.media_type!r}")
    return Manifest(media_type=_str(doc, "mediaType", what) or OCI_MANIFEST, config=config, layers=layers)


def parse_config(data: bytes, what: str) -> ImageConfig:
    doc = _json(data, what, MAX_CONFIG_BYTES)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise _fail(what, "field 'rootfs' is missing")
    diff_ids = _str_list(rootfs, "diff_ids", f"{what}: rootfs")
    for d in diff_ids:
        try:
            validate_digest(d, f"{what}: rootfs.diff_ids")
        except InvalidArgument as e:
            raise FailedPrecondition(e.message) from None
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise _fail(what, "field 'config' must be an object")
    where = f"{what}: config"
    labels = cfg.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise _fail(where, "field 'Labels' must map strings to strings")
    return ImageConfig(
        os=_str(doc, "os", what) or "linux", architecture=_str(doc, "architecture", what),
        variant=_str(doc, "variant", what), os_version=_str(doc, "os.version", what),
        diff_ids=diff_ids, user=_str(cfg, "User", where), entrypoint=_str_list(cfg, "Entrypoint", where),
        cmd=_str_list(cfg, "Cmd", where), env=_str_list(cfg, "Env", where),
        working_dir=_str(cfg, "WorkingDir", where), stop_signal=_str(cfg, "StopSignal", where),
        volumes=_keys(cfg, "Volumes", where), exposed_ports=_keys(cfg, "ExposedPorts", where), labels=dict(labels))


def layer_compression(layer: Descriptor) -> Compression:
    return LAYER_TYPES[layer.media_type][0]


def is_foreign(layer: Descriptor) -> bool:
    return LAYER_TYPES[layer.media_type][1]
