"""Pod networking through CNI plugins, the way kubelet users expect (libcni semantics).

For each pod the plugins of the network config list are run in order with
CNI_COMMAND=ADD, each receiving the previous plugin's result as `prevResult`;
the final result is cached per pod (like libcni's cache) so that DEL, run in
reverse order at teardown, gets the result and the exact config ADD used, even
if the conf dir changed meanwhile. A failed ADD is undone with DEL before the
error is reported. DEL is idempotent and tolerates a netns that is already
gone (CNI_NETNS is then left empty, which the spec allows for DEL).

Plugins are exec'd with asyncio subprocesses: the daemon never forks without
exec. Every call is timed (Prometheus histogram) and bounded by `call_timeout`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable
from cri_shim.network.cni_config import NetworkConfigList, find_network_config, find_plugin

log = logging.getLogger(__name__)

IFNAME = "eth0"
MAX_RESULT_BYTES = 1 << 20
PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}


class CniError(Exception):
    """A plugin failed; `message` carries the plugin's own CNI error text."""

    def __init__(self, plugin: str, command: str, message: str) -> None:
        super().__init__(f"CNI plugin {plugin} {command} failed: {message}")
        self.message = str(self)


@dataclass(frozen=True)
class PodIdentity:
    sandbox_id: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, sandbox_id: str, config: pb.PodSandboxConfig) -> PodIdentity:
        m = config.metadata
        return cls(sandbox_id, m.name, m.namespace, m.uid)

    def cni_args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.sandbox_id};K8S_POD_UID={self.uid}")


def runtime_config(config: pb.PodSandboxConfig, cgroup_parent: str = "") -> dict[str, Any]:
    """The CNI capability arguments kubelet's network plugins understand."""
    ports = []
    for pm in config.port_mappings:
        if pm.protocol not in PROTOCOLS:
            raise InvalidArgument(f"config.port_mappings: protocol {pm.protocol} is not TCP, UDP or SCTP")
        if not 0 < pm.container_port < 65536:
            raise InvalidArgument(f"config.port_mappings: container_port {pm.container_port} is not 1-65535")
        if not 0 <= pm.host_port < 65536:
            raise InvalidArgument(f"config.port_mappings: host_port {pm.host_port} is not 0-65535")
        if pm.host_ip:
            try:
                ipaddress.ip_address(pm.host_ip)
            except ValueError:
                raise InvalidArgument(f"config.port_mappings: host_ip {pm.host_ip!r} is not an IP address") from None
        if pm.host_port:  # container-port-only mappings need no plumbing
            entry: dict[str, Any] = {"hostPort": pm.host_port, "containerPort": pm.container_port,
                                     "protocol": PROTOCOLS[pm.protocol]}
            if pm.host_ip:
                entry["hostIP"] = pm.host_ip
            ports.append(entry)
    dns = config.dns_config
    rc: dict[str, Any] = {"portMappings": ports,
                          "dns": {"servers": list(dns.servers), "searches": list(dns.searches),
                                  "options": list(dns.options)}}
    if cgroup_parent:
        rc["cgroupPath"] = cgroup_parent
    return rc


def result_ips(result: dict[str, Any]) -> tuple[str, ...]:
    """IPs of the pod's interface from a 0.4 or 1.0 result, IPv4 first (the primary pod IP)."""
    ifaces = result.get("interfaces") or []
    ips = []
    for entry in result.get("ips") or []:
        idx = entry.get("interface")
        # Only addresses on the sandbox's interface (host-side veths have no "sandbox").
        if idx is not None and 0 <= idx < len(ifaces) and not ifaces[idx].get("sandbox"):
            continue
        ips.append(str(entry["address"]).split("/")[0])
    return tuple(sorted(ips, key=lambda ip: ipaddress.ip_address(ip).version))


class CniNetwork:
    """setup/teardown of pod networks with the CNI config found in `conf_dir`."""

    def __init__(self, conf_dir: Path, bin_dirs: list[str], cache_dir: Path,
                 registry: CollectorRegistry | None = None, call_timeout: float = 120.0) -> None:
        self._conf_dir, self._bin_dirs, self._cache_dir = conf_dir, bin_dirs, cache_dir
        self._timeout = call_timeout
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._latency = Histogram("cri_shim_cni_operation_duration_seconds",
                                  "Time of one CNI plugin invocation, by command and plugin type.",
                                  ["command", "plugin"], registry=registry or CollectorRegistry(),
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    # ------------------------------------------------------------ public API

    async def setup(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig,
                    cgroup_parent: str = "") -> tuple[str, ...]:
        found = find_network_config(self._conf_dir, self._bin_dirs)
        if found.config is None:
            raise FailedPrecondition(f"the pod network is not ready: {found.message}")
        conf, pod = found.config, PodIdentity.of(sandbox_id, config)
        rc = runtime_config(config, cgroup_parent)
        self._write_cache(sandbox_id, {"conf": conf.raw, "runtimeConfig": rc, "result": None})
        try:
            result = await self._add_chain(conf.raw, pod, netns_path, rc)
        except BaseException as e:
            await self._del_chain(conf.raw, pod, netns_path, rc, None)
            self._drop_cache(sandbox_id)
            if isinstance(e, CniError):
                raise Unavailable(f"network setup of pod {pod.namespace}/{pod.name} failed: {e.message}") from None
            raise
        self._write_cache(sandbox_id, {"conf": conf.raw, "runtimeConfig": rc, "result": result})
        ips = result_ips(result)
        log.debug("pod %s: network %r gave %s", sandbox_id[:13], conf.name, ", ".join(ips) or "no IP")
        return ips

    async def teardown(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> None:
        cached = self._read_cache(sandbox_id)
        if cached is None:
            return  # never set up, or already torn down: DEL is idempotent
        netns = netns_path if netns_path and os.path.exists(netns_path) else ""
        pod = PodIdentity.of(sandbox_id, config)
        try:
            await self._del_chain(cached["conf"], pod, netns, cached["runtimeConfig"], cached.get("result"))
        except CniError as e:
            raise Unavailable(f"network teardown of pod {pod.namespace}/{pod.name} failed: {e.message}") from None
        self._drop_cache(sandbox_id)

    def status(self) -> tuple[bool, str]:
        found = find_network_config(self._conf_dir, self._bin_dirs)
        return found.ready, found.message

    # ------------------------------------------------------------ chains

    async def _add_chain(self, conf: dict[str, Any], pod: PodIdentity, netns: str,
                         rc: dict[str, Any]) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in conf["plugins"]:
            prev = await self._invoke("ADD", plugin, conf, pod, netns, rc, prev)
        return prev or {}

    async def _del_chain(self, conf: dict[str, Any], pod: PodIdentity, netns: str, rc: dict[str, Any],
                         prev: dict[str, Any] | None) -> None:
        errors = []
        for plugin in reversed(conf["plugins"]):
            try:
                await self._invoke("DEL", plugin, conf, pod, netns, rc, prev)
            except CniError as e:  # keep deleting: one plugin's failure must not leak the others' state
                errors.append(e)
        if errors:
            raise errors[0]

    async def _invoke(self, command: str, plugin: dict[str, Any], conf: dict[str, Any], pod: PodIdentity,
                      netns: str, rc: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        kind = plugin["type"]
        path = find_plugin(kind, self._bin_dirs)
        if path is None:
            raise CniError(kind, command, f"plugin not found in {', '.join(self._bin_dirs)}")
        stdin = self._plugin_config(plugin, conf, rc, prev)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": pod.sandbox_id, "CNI_NETNS": netns, "CNI_IFNAME": IFNAME,
               "CNI_PATH": ":".join(self._bin_dirs), "CNI_ARGS": pod.cni_args()}
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(str(path), stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(stdin).encode()), self._timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise CniError(kind, command, f"no answer within {self._timeout:.0f}s") from None
        finally:
            self._latency.labels(command, kind).observe(time.monotonic() - start)
        if proc.returncode != 0:
            raise CniError(kind, command, _plugin_error(out, err, proc.returncode))
        if command != "ADD":
            return prev or {}
        if len(out) > MAX_RESULT_BYTES:
            raise CniError(kind, command, "result larger than 1 MiB")
        try:
            result = json.loads(out)
        except json.JSONDecodeError:
            raise CniError(kind, command, f"result is not JSON: {out[:200]!r}") from None
        if not isinstance(result, dict):
            raise CniError(kind, command, "result is not a JSON object")
        return result

    @staticmethod
    def _plugin_config(plugin: dict[str, Any], conf: dict[str, Any], rc: dict[str, Any],
                       prev: dict[str, Any] | None) -> dict[str, Any]:
        """What one plugin of the list reads on stdin (libcni's buildOneConfig)."""
        out = dict(plugin)
        out["name"], out["cniVersion"] = conf["name"], conf.get("cniVersion", "")
        if prev is not None:
            out["prevResult"] = prev
        wanted = {k for k, on in (plugin.get("capabilities") or {}).items() if on}
        selected = {k: v for k, v in rc.items() if k in wanted}
        if selected:
            out["runtimeConfig"] = selected
        return out

    # ------------------------------------------------------------ result cache

    def _cache_path(self, sandbox_id: str) -> Path:
        return self._cache_dir / f"{sandbox_id}.json"

    def _write_cache(self, sandbox_id: str, data: dict[str, Any]) -> None:
        path = self._cache_path(sandbox_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _read_cache(self, sandbox_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._cache_path(sandbox_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise Internal(f"CNI result cache of pod {sandbox_id} is unreadable: {e}") from None
        return data

    def _drop_cache(self, sandbox_id: str) -> None:
        self._cache_path(sandbox_id).unlink(missing_ok=True)


def _plugin_error(out: bytes, err: bytes, code: int | None) -> str:
    try:
        doc = json.loads(out)
        msg = str(doc.get("msg", "")).strip()
        details = str(doc.get("details", "")).strip()
        return f"{msg} ({details})" if details else msg or f"exit status {code}"
    except (json.JSONDecodeError, AttributeError):
        text = (err or out).decode(errors="replace").strip()
        return text[-500:] or f"exit status {code}"


__all__ = ["CniError", "CniNetwork", "NetworkConfigList", "PodIdentity", "result_ips", "runtime_config"]
