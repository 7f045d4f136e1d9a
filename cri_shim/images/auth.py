"""Registry credentials and authentication challenges.

Where credentials come from, in order: PullImage's AuthConfig (used only for
the registry the image names, never for a mirror, and only if its
`server_address`, when given, names that registry), then the credentials
file of `[registry] credentials_file` (Docker's `config.json` layout:
`{"auths": {"<host>": {"auth": base64("user:password")}}}`, also `username`,
`password`, `identitytoken`, `registrytoken`), keyed by the host actually
contacted.

Secrets live only in `Credentials` objects in memory: their repr is redacted,
they are never logged, stored, put in an error message, an argv or an
environment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from cri_shim.errors import FailedPrecondition, InvalidArgument
from cri_shim.images.hosts import DOCKER_HUB

log = logging.getLogger(__name__)

_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)   # OAuth2 refresh token for the token endpoint
    registry_token: str = field(default="", repr=False)   # a bearer token sent to the registry as-is

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secrets=[redacted])"

    def __str__(self) -> str:
        return repr(self)

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def fingerprint(self) -> str:
        """An in-memory key telling credential sets apart (pulls with different credentials never share)."""
        h = hashlib.sha256()
        for part in (self.username, self.password, self.identity_token, self.registry_token):
            h.update(part.encode() + b"\0")
        return h.hexdigest()


def registry_of(server_address: str) -> str:
    """The registry host a `server_address` names ("https://index.docker.io/v1/" -> "docker.io")."""
    text = server_address.strip()
    text = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text)
    host = text.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def same_registry(a: str, b: str) -> bool:
    return registry_of(a) == registry_of(b)


def from_request(registry: str, username: str, password: str, auth: str, server_address: str,
                 identity_token: str, registry_token: str) -> Credentials | None:
    """Credentials from PullImage's AuthConfig, or None when there are none for `registry`."""
    if auth and not (username or password):
        username, password = _decode_auth(auth, "auth.auth")
    creds = Credentials(username=username, password=password, identity_token=identity_token,
                        registry_token=registry_token)
    if creds.empty:
        return None
    if server_address and not same_registry(server_address, registry):
        log.info("credentials in the request are for %s, not %s: not using them", registry_of(server_address),
                 registry)
        return None
    return creds


def _decode_auth(auth: str, what: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(auth.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(f"{what} is not base64 of \"username:password\"") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidArgument(f"{what} does not decode to \"username:password\"")
    return username, password


def from_file(path: str, host: str) -> Credentials | None:
    """Credentials for `host` from a Docker config.json-style file; None if the file has none."""
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FailedPrecondition(f"credentials file {path}: cannot read it ({type(e).__name__})") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise FailedPrecondition(f"credentials file {path}: expected an object with \"auths\"")
    wanted = registry_of(host)
    for key, entry in auths.items():
        if not isinstance(key, str) or registry_of(key) != wanted or not isinstance(entry, dict):
            continue
        username, password = _text(entry, "username"), _text(entry, "password")
        if entry.get("auth") and not username:
            username, password = _decode_auth(_text(entry, "auth"), f"credentials file {path}: auths[{key!r}].auth")
        creds = Credentials(username=username, password=password, identity_token=_text(entry, "identitytoken"),
                            registry_token=_text(entry, "registrytoken"))
        return None if creds.empty else creds
    return None


def _text(entry: dict[str, object], key: str) -> str:
    value = entry.get(key, "")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Challenge:
    scheme: str                 # lower-case: "bearer", "basic"
    params: dict[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(?:,|$)')
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header (RFC 7235): `Bearer realm="...",service="..." , Basic realm="..."`."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            p = _PARAM.match(header, pos)
            if not p:
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        out.append(Challenge(scheme=scheme, params=params))
        while pos < len(header) and header[pos] in ", ":
            pos += 1
    return out


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
