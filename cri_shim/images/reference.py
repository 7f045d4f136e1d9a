"""Image references: parse, validate and normalise what kubelet and crictl send.

The grammar is the distribution project's (`docker/distribution/reference`):
`[domain[:port]/]path[:tag][@digest]`. Names are normalised the way docker
and containerd do it, so `busybox` and `docker.io/library/busybox:latest` are
the same image: a first component without `.` or `:` (and not `localhost`)
is not a domain, `docker.io` is implied, and single-component docker.io paths
get `library/`.

An image id (`sha256:<64 hex>` or the bare 64 hex characters) is not a
reference to a registry; `parse_lookup` tells the two apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cri_shim.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")
ID_PREFIX = re.compile(r"^(?:sha256:)?[a-f0-9]{12,64}$")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: `domain/path` plus a tag, a digest, or both."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def tagged(self) -> str:
        """`name:tag` (the form listed in repo_tags); empty when pulled by digest."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def with_digest(self, digest: str) -> str:
        """`name@digest` (the form listed in repo_digests)."""
        return f"{self.name}@{digest}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for."""
        return self.digest or self.tag

    def __str__(self) -> str:
        if self.digest:
            return self.with_digest(self.digest)
        return self.tagged


def validate_digest(digest: str, what: str = "digest") -> str:
    """A `sha256:<64 lowercase hex>` digest, or InvalidArgument naming `what`."""
    if not _DIGEST.match(digest):
        raise InvalidArgument(f"{what} {digest!r} is not a valid digest (expected sha256:<64 hex characters>)")
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        raise InvalidArgument(f"{what} {digest!r} uses the unsupported algorithm {algorithm!r}; "
                              "cri-shim supports sha256 only")
    if not _SHA256_HEX.match(hex_part):
        raise InvalidArgument(f"{what} {digest!r}: a sha256 digest has 64 lowercase hex characters")
    return digest


def is_image_id(text: str) -> bool:
    """True for `sha256:<64 hex>` and for 64 bare hex characters (never a valid repository name)."""
    hex_part = text.removeprefix("sha256:")
    return bool(_SHA256_HEX.match(hex_part))


def parse(text: str) -> Reference:
    """Parse and normalise a reference; InvalidArgument naming the problem otherwise."""
    if not text:
        raise InvalidArgument("image reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"image reference {text!r} contains whitespace")
    if is_image_id(text):
        raise InvalidArgument(f"{text!r} is an image id, not a reference a registry can serve")
    remainder, at, digest = text.partition("@")
    if at:
        validate_digest(digest, f"image reference {text!r}: digest")
    name, tag = _split_tag(remainder)
    if (tag or remainder.endswith(":")) and not _TAG.match(tag):
        raise InvalidArgument(f"image reference {text!r}: invalid tag {tag!r} (letters, digits, '_', '.', '-'; "
                              "at most 128 characters, not starting with '.' or '-')")
    domain, path = _split_domain(name)
    if not _DOMAIN.match(domain):
        raise InvalidArgument(f"image reference {text!r}: invalid registry host {domain!r}")
    if path.lower() != path:
        raise InvalidArgument(f"image reference {text!r}: repository name must be lowercase")
    if not _PATH.match(path):
        raise InvalidArgument(f"image reference {text!r}: invalid repository name {path!r}")
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"image reference {text!r}: repository name longer than {MAX_NAME_LENGTH} characters")
    if not tag and not digest:
        tag = "latest"
    if digest:
        tag = ""  # name:tag@digest pulls the digest; the tag would be a claim nobody checked
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _split_tag(name: str) -> tuple[str, str]:
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, ""


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


@dataclass(frozen=True)
class Lookup:
    """What ImageStatus/RemoveImage/CreateContainer were given: an id (or id prefix) or a reference."""

    image_id_prefix: str = ""        # "sha256:<hex...>" when the text was an id or a unique id prefix
    reference: Reference | None = None


def parse_lookup(text: str) -> Lookup:
    """An image id, an id prefix of at least 12 hex characters, or a reference."""
    if not text:
        raise InvalidArgument("image is empty: give a reference (name:tag or name@digest) or an image id")
    if is_image_id(text):
        return Lookup(image_id_prefix="sha256:" + text.removeprefix("sha256:"))
    if text.startswith("sha256:") and ID_PREFIX.match(text):
        return Lookup(image_id_prefix=text)
    try:
        ref = parse(text)
    except InvalidArgument:
        if ID_PREFIX.match(text):
            return Lookup(image_id_prefix="sha256:" + text)
        raise
    if ID_PREFIX.match(text) and ref.domain == DEFAULT_DOMAIN:
        # "0123456789ab" is both a short id and a valid docker.io name: try the id first, like docker.
        return Lookup(image_id_prefix="sha256:" + text, reference=ref)
    return Lookup(reference=ref)
