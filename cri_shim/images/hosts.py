"""Per-registry host settings in containerd's `hosts.toml` format.

`[registry] config_path` names a directory; the settings for registry
`example.com:5000` are in `<config_path>/example.com:5000/hosts.toml` (or
`example.com_5000_/`, containerd's spelling for ports), falling back to
`<config_path>/_default/hosts.toml`:

    server = "https://registry.k8s.io"        # the upstream; default https://<host>
    capabilities = ["pull", "resolve"]        # top-level keys configure the upstream
    [host."http://127.0.0.1:5000"]            # mirrors, tried in file order before the upstream
      capabilities = ["pull", "resolve"]
      skip_verify = false
      ca = "/etc/certs/mirror.pem"             # or a list; relative to the host directory
      client = [["client.crt", "client.key"]]
      override_path = false                   # true: the URL path is the API root (no /v2 appended)
      [host."http://127.0.0.1:5000".header]
        x-custom = "value"

A mirror keeps the image's name: `registry.k8s.io/pause:3.9` through the
mirror above is fetched as `http://127.0.0.1:5000/v2/pause/manifests/3.9`
and recorded as `registry.k8s.io/pause:3.9`. Plain HTTP is used only where a
URL here says `http://`: that is what "configured as insecure" means.

The files are read on every pull, so edits apply without a restart.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cri_shim.errors import FailedPrecondition

CAPABILITIES = ("pull", "resolve", "push")
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True)
class RegistryHost:
    scheme: str                      # "https" or "http"
    netloc: str                      # host[:port]
    api_root: str                    # "/v2" unless the URL says otherwise
    capabilities: frozenset[str] = frozenset(CAPABILITIES)
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def insecure(self) -> bool:
        return self.scheme == "http"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class HostsConfig:
    """The parsed settings for one registry name: the hosts to try, in order."""

    registry: str
    hosts: tuple[RegistryHost, ...]
    source: str = ""               # the hosts.toml used, or "" for the built-in default


def _default_server(registry: str) -> str:
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else f"https://{registry}"


def host_dirs(config_path: Path, registry: str) -> list[Path]:
    names = [registry]
    host, sep, port = registry.rpartition(":")
    if sep and port.isdigit():
        names.append(f"{host}_{port}_")
    names.append("_default")
    return [config_path / n for n in names]


def load(config_path: str, registry: str) -> HostsConfig:
    """The hosts for `registry`: mirrors in file order, then the upstream (if it may pull)."""
    if config_path:
        for directory in host_dirs(Path(config_path), registry):
            path = directory / "hosts.toml"
            if path.is_file():
                return _parse_file(path, registry)
    upstream = _host(_default_server(registry), {}, Path("/"), "built-in default", is_mirror=False)
    return HostsConfig(registry=registry, hosts=(upstream,))


def _parse_file(path: Path, registry: str) -> HostsConfig:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FailedPrecondition(f"registry settings {path}: cannot read: {e}") from None
    where = str(path)
    known = {"server", "capabilities", "skip_verify", "ca", "client", "header", "override_path", "host"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise FailedPrecondition(f"registry settings {where}: unknown key(s) {', '.join(unknown)}")
    mirrors_raw = doc.get("host", {})
    if not isinstance(mirrors_raw, dict):
        raise FailedPrecondition(f"registry settings {where}: [host] must be tables keyed by URL")
    hosts = [_host(url, table, path.parent, f"{where}: [host.{url!r}]", is_mirror=True)
             for url, table in mirrors_raw.items()]
    server = doc.get("server", _default_server(registry))
    if not isinstance(server, str):
        raise FailedPrecondition(f"registry settings {where}: server must be a URL string")
    top = {k: v for k, v in doc.items() if k not in ("server", "host")}
    upstream = _host(server, top, path.parent, f"{where}: server", is_mirror=False)
    hosts.append(upstream)
    return HostsConfig(registry=registry, hosts=tuple(hosts), source=where)


def _host(url: str, table: Any, base: Path, where: str, is_mirror: bool) -> RegistryHost:
    if not isinstance(table, dict):
        raise FailedPrecondition(f"registry settings {where}: must be a table")
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FailedPrecondition(f"registry settings {where}: {url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    if not table.get("override_path", False):
        path = path if path.endswith("/v2") else f"{path}/v2"
    return RegistryHost(
        scheme=parts.scheme, netloc=parts.netloc, api_root=path or "/v2",
        capabilities=_capabilities(table.get("capabilities", list(CAPABILITIES)), where),
        skip_verify=_bool(table.get("skip_verify", False), where, "skip_verify"),
        ca_files=tuple(str(base / p) for p in _strings(table.get("ca", []), where, "ca")),
        client_certs=_client_certs(table.get("client", []), base, where),
        headers=_headers(table.get("header", {}), where),
        is_mirror=is_mirror)


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise FailedPrecondition(f"registry settings {where}: {key} must be true or false")
    return value


def _strings(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FailedPrecondition(f"registry settings {where}: {key} must be a string or a list of strings")
    return list(value)


def _capabilities(value: Any, where: str) -> frozenset[str]:
    caps = _strings(value, where, "capabilities")
    bad = [c for c in caps if c not in CAPABILITIES]
    if bad:
        raise FailedPrecondition(f"registry settings {where}: unknown capabilities {bad} "
                                 f"(known: {', '.join(CAPABILITIES)})")
    return frozenset(caps)


def _client_certs(value: Any, base: Path, where: str) -> tuple[tuple[str, str], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise FailedPrecondition(f"registry settings {where}: client must be a path or a list")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((str(base / item), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item):
            out.append((str(base / item[0]), str(base / item[1])))
        else:
            raise FailedPrecondition(f"registry settings {where}: client entries are a path or [cert, key]")
    return tuple(out)


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise FailedPrecondition(f"registry settings {where}: header must be a table")
    out = []
    for k, v in value.items():
        for item in _strings(v, where, f"header.{k}"):
            if k.lower() == "authorization":
                raise FailedPrecondition(f"registry settings {where}: header Authorization is not allowed; "
                                         "put credentials in the credentials file")
            out.append((k, item))
    return tuple(out)
