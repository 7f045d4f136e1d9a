"""Running CNI plugins per the CNI specification (1.0, and 0.3/0.4 results), like libcni.

ADD runs the conflist's plugins in order, each getting the previous one's
result as `prevResult`; DEL runs them in reverse, CHECK in order, both with
the result ADD produced. That result, and the exact network config and
arguments of the ADD, are cached on disk per (network, container, interface)
like libcni's `results/` cache, so DEL works with what ADD used even after the
config changed or vanished, and after a daemon restart. The cache entry is
written *before* the first plugin runs (without a result), so a crash in the
middle of an ADD still leaves enough behind for DEL to release what the
plugins allocated.

Plugins run as asyncio subprocesses (exec, no preexec_fn) in their own
session, so a plugin that outlives `timeout` is killed with its children.
Every call is timed into a Prometheus histogram.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from cri_shim.errors import FailedPrecondition, Unavailable
from cri_shim.network.cni_config import NetworkConfigList, find_plugin

log = logging.getLogger(__name__)

CACHE_KIND = "cniCacheV1"
MAX_OUTPUT_BYTES = 1 << 20
PLUGIN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CniPluginError(Unavailable):
    """A plugin failed; the message names the plugin, the command and the plugin's own error.

    UNAVAILABLE: most plugin failures are conditions of the node (IPAM exhausted, a bridge being
    reconfigured) that a retry by kubelet can get past.
    """


@dataclass(frozen=True)
class CniCall:
    """Everything an ADD needs besides the network config."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()          # CNI_ARGS key/value pairs
    capability_args: Mapping[str, Any] = field(default_factory=dict)  # runtimeConfig, by capability name


@dataclass(frozen=True)
class CacheEntry:
    network_name: str
    container_id: str
    ifname: str
    config: dict[str, Any]          # the conflist the ADD used
    args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any]
    netns: str
    result: dict[str, Any] | None   # None: the ADD did not finish


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in (version or "0.1.0").split("."):
        digits = re.match(r"\d+", p)
        parts.append(int(digits.group(0)) if digits else 0)
    return tuple(parts)


def pod_ips(result: Mapping[str, Any] | None, ifname: str = "eth0") -> tuple[str, ...]:
    """The IPs a CNI result gives the pod interface: IPv4 first, then IPv6 (as containerd reports them)."""
    if not result:
        return ()
    found: list[str] = []
    if "ips" in result:
        interfaces = result.get("interfaces") or []
        for entry in result.get("ips") or []:
            index = entry.get("interface")
            # An address of another interface (the host-side veth, a second pod interface) is not the pod IP;
            # one without an interface index belongs to the pod interface, as go-cni reads it.
            if isinstance(index, int) and 0 <= index < len(interfaces) and interfaces[index].get("name") != ifname:
                continue
            address = str(entry.get("address", "")).split("/")[0]
            if address:
                found.append(address)
    else:  # 0.1.0 / 0.2.0 results
        for key in ("ip4", "ip6"):
            block = result.get(key)
            if isinstance(block, dict) and block.get("ip"):
                found.append(str(block["ip"]).split("/")[0])
    v4 = [a for a in found if ":" not in a]
    v6 = [a for a in found if ":" in a]
    return tuple(dict.fromkeys(v4 + v6))


class CniRunner:
    def __init__(self, bin_dirs: list[str], cache_dir: Path, timeout: float, registry: CollectorRegistry) -> None:
        self._bin_dirs = bin_dirs
        self._results = cache_dir / "results"
        self._timeout = timeout
        self._latency = Histogram("cri_shim_cni_plugin_duration_seconds",
                                  "Time one CNI plugin call took, by plugin type and command.",
                                  ["plugin", "command"], buckets=PLUGIN_BUCKETS, registry=registry)
        self._failures = Counter("cri_shim_cni_plugin_failures",
                                 "CNI plugin calls that failed, by plugin type and command.",
                                 ["plugin", "command"], registry=registry)

    # ------------------------------------------------------------ commands

    async def add(self, conf: NetworkConfigList, call: CniCall) -> dict[str, Any]:
        """ADD the container to `conf`'s network; returns the final result (also cached)."""
        if not _NETWORK_NAME.match(conf.name):
            raise FailedPrecondition(f"{conf.source}: network name {conf.name!r} is not valid for CNI "
                                     "(letters, digits, '_', '.', '-')")
        entry = CacheEntry(network_name=conf.name, container_id=call.container_id, ifname=call.ifname,
                           config=conf.raw, args=call.args, capability_args=dict(call.capability_args),
                           netns=call.netns, result=None)
        await asyncio.to_thread(self._write_cache, entry)
        result: dict[str, Any] | None = None
        for plugin in conf.plugins:
            out = await self._invoke("ADD", conf.raw, plugin, entry, result)
            if out:
                result = out
        final = result or {"cniVersion": conf.cni_version}
        await asyncio.to_thread(self._write_cache, _with_result(entry, final))
        return final

    async def delete(self, container_id: str, netns_present: bool, ifname: str = "eth0") -> bool:
        """DEL with the cached config and result; False when nothing was cached (nothing to do). Idempotent."""
        entry = await asyncio.to_thread(self.load_cache, container_id, ifname)
        if entry is None:
            return False
        config = entry.config
        # A netns that is gone is passed as "": plugins then release only what lives outside it (IPAM, NAT).
        target = entry if netns_present else _without_netns(entry)
        prev = entry.result if version_tuple(str(config.get("cniVersion", ""))) >= (0, 4, 0) else None
        errors = []
        for plugin in reversed(config.get("plugins") or []):
            try:
                await self._invoke("DEL", config, plugin, target, prev)
            except CniPluginError as e:  # keep deleting: one plugin's failure must not leak the others' state
                errors.append(e)
        if errors:
            raise errors[0]  # the cache entry stays, so the retried DEL has everything it needs
        await asyncio.to_thread(self._remove_cache, entry)
        return True

    async def check(self, container_id: str, ifname: str = "eth0") -> None:
        """CHECK the cached ADD; raises CniPluginError (or FailedPrecondition if nothing can be checked)."""
        entry = await asyncio.to_thread(self.load_cache, container_id, ifname)
        if entry is None or entry.result is None:
            raise FailedPrecondition(f"container {container_id} has no completed CNI ADD to check")
        config = entry.config
        if version_tuple(str(config.get("cniVersion", ""))) < (0, 4, 0) or config.get("disableCheck"):
            return  # CHECK exists since 0.4.0, and a network may opt out of it
        for plugin in config.get("plugins") or []:
            await self._invoke("CHECK", config, plugin, entry, entry.result)

    # ------------------------------------------------------------ one plugin

    async def _invoke(self, command: str, config: Mapping[str, Any], plugin: Mapping[str, Any],
                      entry: CacheEntry, prev: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = str(plugin.get("type", ""))
        path = find_plugin(kind, self._bin_dirs)
        if path is None:
            raise CniPluginError(f"CNI plugin {kind!r} of network {entry.network_name!r} not found in "
                                 f"{', '.join(self._bin_dirs)}")
        stdin = json.dumps(_netconf(config, plugin, prev, entry.capability_args, command)).encode()
        env = self._environment(command, entry)
        started = time.monotonic()
        try:
            rc, out, err = await self._run(path, stdin, env)
        finally:
            self._latency.labels(kind, command).observe(time.monotonic() - started)
        if rc != 0:
            self._failures.labels(kind, command).inc()
            raise CniPluginError(f"CNI plugin {kind} {command} for network {entry.network_name!r} failed: "
                                 f"{_error_text(rc, out, err)}")
        if err.strip():
            log.debug("CNI plugin %s %s stderr: %s", kind, command, err.decode(errors="replace").strip()[:2000])
        if command != "ADD" or not out.strip():
            return None
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError as e:
            raise CniPluginError(f"CNI plugin {kind} ADD printed a result that is not JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise CniPluginError(f"CNI plugin {kind} ADD printed a result that is not a JSON object")
        return parsed

    def _environment(self, command: str, entry: CacheEntry) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": entry.container_id,
            "CNI_NETNS": entry.netns,
            "CNI_IFNAME": entry.ifname,
            "CNI_PATH": ":".join(self._bin_dirs),
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in entry.args),
        })
        return env

    async def _run(self, path: Path, stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/", start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self._timeout)
        except asyncio.TimeoutError:
            _kill_group(proc.pid)  # the plugin and anything it started
            await proc.wait()
            raise CniPluginError(f"CNI plugin {path.name} did not finish within {self._timeout:g} s "
                                 "(network.cni_plugin_timeout); it was killed") from None
        except BaseException:
            _kill_group(proc.pid)  # cancelled: never leave a half-run plugin behind (asyncio reaps it)
            raise
        return int(proc.returncode or 0), out[:MAX_OUTPUT_BYTES], err[:MAX_OUTPUT_BYTES]

    # ------------------------------------------------------------ the result cache

    def cache_path(self, network_name: str, container_id: str, ifname: str) -> Path:
        return self._results / f"{network_name}-{container_id}-{ifname}"

    def load_cache(self, container_id: str, ifname: str = "eth0") -> CacheEntry | None:
        if not _CONTAINER_ID.match(container_id):
            return None
        try:
            candidates = sorted(self._results.glob(f"*-{container_id}-{ifname}"))
        except OSError:
            return None
        for path in candidates:
            try:
                data = json.loads(path.read_bytes())
                return _entry_from_json(data)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring unreadable CNI cache file %s: %s", path, e)
        return None

    def cached_containers(self) -> set[str]:
        """Container ids with a cache entry (for garbage collection)."""
        out = set()
        try:
            for path in self._results.iterdir():
                try:
                    out.add(str(json.loads(path.read_bytes())["containerId"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        except FileNotFoundError:
            pass
        return out

    def _write_cache(self, entry: CacheEntry) -> None:
        self._results.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.cache_path(entry.network_name, entry.container_id, entry.ifname)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(_entry_to_json(entry)).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the DEL after a crash depends on this entry
        os.replace(tmp, path)

    def _remove_cache(self, entry: CacheEntry) -> None:
        try:
            self.cache_path(entry.network_name, entry.container_id, entry.ifname).unlink()
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- helpers


def _netconf(config: Mapping[str, Any], plugin: Mapping[str, Any], prev: dict[str, Any] | None,
             capability_args: Mapping[str, Any], command: str) -> dict[str, Any]:
    """One plugin's stdin: its own config plus the list's name and version, runtimeConfig and prevResult."""
    version = str(config.get("cniVersion", ""))
    conf = dict(plugin)
    conf["name"] = config.get("name", "")
    conf["cniVersion"] = version
    capabilities = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capability_args.items() if isinstance(capabilities, dict) and capabilities.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    else:
        conf.pop("runtimeConfig", None)
    chained = (0, 4, 0) if command == "DEL" else (0, 3, 0)
    if prev is not None and version_tuple(version) >= chained:
        conf["prevResult"] = prev
    else:
        conf.pop("prevResult", None)
    return conf


def _error_text(rc: int, out: bytes, err: bytes) -> str:
    try:
        data = json.loads(out)
        if isinstance(data, dict) and "msg" in data:
            details = f" ({data['details']})" if data.get("details") else ""
            return f"{data['msg']}{details} [code {data.get('code')}]"
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    text = (err or out).decode(errors="replace").strip()
    return f"exit status {rc}" + (f": {text[-2000:]}" if text else "")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _with_result(entry: CacheEntry, result: dict[str, Any]) -> CacheEntry:
    return CacheEntry(entry.network_name, entry.container_id, entry.ifname, entry.config, entry.args,
                      entry.capability_args, entry.netns, result)


def _without_netns(entry: CacheEntry) -> CacheEntry:
    return CacheEntry(entry.network_name, entry.container_id, entry.ifname, entry.config, entry.args,
                      entry.capability_args, "", entry.result)


def _entry_to_json(entry: CacheEntry) -> dict[str, Any]:
    return {
        "kind": CACHE_KIND,
        "containerId": entry.container_id,
        "ifName": entry.ifname,
        "networkName": entry.network_name,
        "config": base64.b64encode(json.dumps(entry.config).encode()).decode(),
        "cniArgs": [list(kv) for kv in entry.args],
        "capabilityArgs": dict(entry.capability_args),
        "netns": entry.netns,
        "result": entry.result,
    }


def _entry_from_json(data: dict[str, Any]) -> CacheEntry:
    if data.get("kind") != CACHE_KIND:
        raise ValueError(f"unknown cache kind {data.get('kind')!r}")
    config = json.loads(base64.b64decode(data["config"]))
    if not isinstance(config, dict):
        raise ValueError("cached config is not a JSON object")
    return CacheEntry(network_name=str(data["networkName"]), container_id=str(data["containerId"]),
                      ifname=str(data["ifName"]), config=config,
                      args=tuple((str(k), str(v)) for k, v in data.get("cniArgs") or []),
                      capability_args=dict(data.get("capabilityArgs") or {}), netns=str(data.get("netns", "")),
                      result=data.get("result"))
