"""Finding the CNI network configuration, the way libcni does.

The first file by name in the conf dir with extension .conflist, .conf or
.json that parses and whose plugins exist wins. A .conf (single plugin) is
wrapped into a list. When nothing is usable, `NetworkConfigStatus.message`
says which directory was searched and what was wrong with each file, so that
"NetworkReady=false" is something an operator can act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONF_EXTENSIONS = (".conflist", ".conf", ".json")
MAX_CONF_BYTES = 1 << 20


@dataclass(frozen=True)
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: Path
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False, default_factory=dict)


@dataclass(frozen=True)
class NetworkConfigStatus:
    config: NetworkConfigList | None
    message: str

    @property
    def ready(self) -> bool:
        return self.config is not None


class ConfError(Exception):
    pass


def load_conf_file(path: Path, bin_dirs: list[str]) -> NetworkConfigList:
    if path.stat().st_size > MAX_CONF_BYTES:
        raise ConfError(f"larger than {MAX_CONF_BYTES} bytes")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfError("top level is not a JSON object")
    if path.suffix != ".conflist":
        # A single-plugin .conf: wrap it into a list like libcni's ConfListFromConf.
        if "type" not in data:
            raise ConfError('no "type" key (a .conf file holds one plugin)')
        data = {"cniVersion": data.get("cniVersion", ""), "name": data.get("name", ""), "plugins": [data]}
    name, version, plugins = data.get("name"), data.get("cniVersion", ""), data.get("plugins")
    if not isinstance(name, str) or not name:
        raise ConfError('missing "name"')
    if not isinstance(plugins, list) or not plugins:
        raise ConfError('"plugins" must be a non-empty list')
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise ConfError(f'plugins[{i}] has no "type"')
        if "/" in plugin["type"] or plugin["type"] in (".", ".."):
            raise ConfError(f'plugins[{i}].type {plugin["type"]!r} is not a plain plugin name')
        if find_plugin(plugin["type"], bin_dirs) is None:
            raise ConfError(f'plugin {plugin["type"]!r} not found in {", ".join(bin_dirs)}')
    return NetworkConfigList(name=name, cni_version=str(version), plugins=tuple(plugins), source=path, raw=data)


def find_plugin(name: str, bin_dirs: list[str]) -> Path | None:
    for d in bin_dirs:
        candidate = Path(d) / name
        if candidate.is_file():
            return candidate
    return None


def find_network_config(conf_dir: Path, bin_dirs: list[str]) -> NetworkConfigStatus:
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_EXTENSIONS and p.is_file())
    except FileNotFoundError:
        return NetworkConfigStatus(None, f"no network config: directory {conf_dir} does not exist")
    except OSError as e:
        return NetworkConfigStatus(None, f"no network config: cannot read {conf_dir}: {e.strerror}")
    if not files:
        return NetworkConfigStatus(None, f"no network config found in {conf_dir} "
                                         f"(expected a {', '.join(CONF_EXTENSIONS)} file)")
    problems = []
    for path in files:
        try:
            conf = load_conf_file(path, bin_dirs)
        except (ConfError, OSError) as e:
            problems.append(f"{path}: {e}")
            continue
        return NetworkConfigStatus(conf, f"using network {conf.name!r} from {path}")
    return NetworkConfigStatus(None, "no usable network config in " + str(conf_dir) + ": " + "; ".join(problems))
