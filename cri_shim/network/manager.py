"""NetworkManager: the daemon's one entry point for pod networking.

RunPodSandbox calls `setup(spec)` before it starts the pod shim (which joins
the returned `netns_path` and bind-mounts the returned files), StopPodSandbox
calls `teardown(sandbox_id)`, Status calls `status()`, and startup calls
`gc(known_sandbox_ids)` once. Which network a pod gets is decided at setup:
- mode "builtin": the built-in bridge;
- mode "cni": the CNI network (setup fails while no config is usable);
- mode "auto": the CNI network when a usable config exists, else the bridge.
Teardown never needs to know which it was: it undoes whatever the store and
the CNI cache say the pod has, so it also works after a config change or a
restart, and it is idempotent and tolerant of a netns that is already gone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from cri_shim.config import NetworkConfig
from cri_shim.errors import FailedPrecondition, Internal
from cri_shim.network import podfiles
from cri_shim.network.allocations import Allocations
from cri_shim.network.builtin import BuiltinNetwork, BuiltinSettings
from cri_shim.network.cni import CniCall, CniRunner, pod_ips
from cri_shim.network.cni_config import NetworkConfigList
from cri_shim.network.conf_watch import ConfWatcher
from cri_shim.network.nft import Nft, NftError
from cri_shim.network.types import NetworkReadiness, PodNetworkSpec, PodNetworkStatus, validate
from cri_shim.services.runtime_config import POD_CIDR_SETTING
from cri_shim.services.undo import UndoStack
from cri_shim.store.db import MetadataStore
from runtime.base import RuntimeFailure
from runtime.linux import netns

log = logging.getLogger(__name__)

BUILTIN = "builtin"
NETWORK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
READY_REASON = "NetworkReady"
UNLIMITED_BURST = 2**32 - 1  # bits; the burst containerd passes with a bandwidth annotation
NOT_READY_REASON = "NetworkPluginNotReady"


class NetworkManager:
    def __init__(self, config: NetworkConfig, root_dir: Path, state_dir: Path, store: MetadataStore,
                 registry: CollectorRegistry, host_files: podfiles.HostFiles | None = None) -> None:
        self.config = config
        self.netns_dir = state_dir / "netns"
        self.host_files = host_files or podfiles.HostFiles(resolv_conf=Path(config.host_resolv_conf))
        self._watcher = ConfWatcher(Path(config.cni_conf_dir), config.cni_bin_dirs)
        self._alloc = Allocations(store)
        self._store = store
        self._cni = CniRunner(config.cni_bin_dirs, root_dir / "cni", config.cni_plugin_timeout, registry)
        self._settings = BuiltinSettings(subnet=ipaddress.IPv4Network(config.builtin_subnet),
                                         bridge=config.builtin_bridge, nft_table=config.nft_table,
                                         masquerade=config.builtin_masquerade)
        self._builtin: BuiltinNetwork | None = None
        self._nft: Nft | None = None
        self._pod_locks: dict[str, asyncio.Lock] = {}
        self._latency = Histogram("cri_shim_pod_network_duration_seconds",
                                  "Time to set up, check or tear down one pod's network, by network kind.",
                                  ["network", "operation"], buckets=NETWORK_BUCKETS, registry=registry)

    # ------------------------------------------------------------ readiness

    def status(self) -> NetworkReadiness:
        """NetworkReady for the Status RPC: false only when new pods could not get a network."""
        found = self._watcher.current()
        mode = self.config.mode
        if mode != BUILTIN and found.ready:
            return NetworkReadiness(True, READY_REASON, found.message)
        if mode == "cni":
            return NetworkReadiness(False, NOT_READY_REASON, found.message)
        problem = self._builtin_problem()
        if problem:
            why = "" if mode == BUILTIN else f"{found.message}; and "
            return NetworkReadiness(False, NOT_READY_REASON, f"{why}the built-in network cannot be used: {problem}")
        prefix = "" if mode == BUILTIN else f"{found.message}; "
        return NetworkReadiness(True, READY_REASON, f"{prefix}pods use the built-in network (bridge "
                                                    f"{self._settings.bridge}, subnet {self._settings.subnet})")

    def _builtin_problem(self) -> str:
        try:
            self._builtin_network()
        except NftError as e:
            return str(e)
        return ""

    def _builtin_network(self) -> BuiltinNetwork:
        if self._builtin is None:
            self._nft = Nft()
            self._builtin = BuiltinNetwork(self._settings, self._alloc, self._nft)
        return self._builtin

    def _choose(self) -> NetworkConfigList | None:
        """The CNI network new pods join, or None for the built-in one."""
        if self.config.mode == BUILTIN:
            return None
        found = self._watcher.current()
        if found.config is not None:
            return found.config
        if self.config.mode == "cni":
            raise FailedPrecondition(f"network not ready: {found.message}")
        return None

    async def watch(self, interval: float = 1.0) -> None:
        """Background task: notice (and log) CNI config changes as they happen. Cancel to stop."""
        await self._watcher.run(interval)

    # ------------------------------------------------------------ per pod

    def netns_path(self, sandbox_id: str) -> Path:
        return self.netns_dir / sandbox_id

    async def setup(self, spec: PodNetworkSpec) -> PodNetworkStatus:
        """Give the pod a pinned netns with an IP (and hostPorts), and write its DNS/hostname/hosts files.

        All or nothing: on any failure every step already taken is undone (CNI DEL, IP released,
        hostPorts unpublished, netns removed) and the error is raised.
        """
        validate(spec)
        if spec.host_network:
            files = await asyncio.to_thread(podfiles.write_pod_files, spec.sandbox_dir, spec.hostname, spec.dns, (),
                                            True, self.host_files)
            return PodNetworkStatus(netns_path=None, ips=(), network="host", files=files)
        conf = self._choose()
        kind = BUILTIN if conf is None else "cni"
        started = time.monotonic()
        async with self._pod_lock(spec.sandbox_id), UndoStack(f"network setup of {spec.sandbox_id}") as undo:
            path = await self._create_netns(spec.sandbox_id)
            undo.push("remove netns", lambda: netns.remove(path))
            if conf is None:
                ips = await self._builtin_network().setup(spec, path)  # undoes its own steps on failure
                undo.push("built-in teardown", lambda: self._builtin_network().teardown(spec.sandbox_id))
                name = BUILTIN
            else:
                ips = await self._cni_add(spec, conf, path, undo)
                name = conf.name
            files = await asyncio.to_thread(podfiles.write_pod_files, spec.sandbox_dir, spec.hostname, spec.dns,
                                            ips, False, self.host_files)
            undo.commit()
        self._latency.labels(kind, "setup").observe(time.monotonic() - started)
        log.info("pod %s/%s (%s) network %s: %s", spec.namespace, spec.name, spec.sandbox_id[:13], name,
                 ", ".join(ips) or "no IP")
        return PodNetworkStatus(netns_path=path, ips=ips, network=name, files=files)

    async def _create_netns(self, sandbox_id: str) -> Path:
        path = self.netns_path(sandbox_id)
        if netns.is_netns(path):
            return path  # a retried setup of the same sandbox
        try:
            netns.remove(path)  # a pin file left unmounted by a crash
            await asyncio.to_thread(self.netns_dir.mkdir, 0o711, True, True)
            return await netns.create_async(path)
        except RuntimeFailure as e:
            raise Internal(e.message) from None

    async def _cni_add(self, spec: PodNetworkSpec, conf: NetworkConfigList, path: Path,
                       undo: UndoStack) -> tuple[str, ...]:
        pod = f"{spec.namespace}/{spec.name}"
        # hostPorts are reserved in the store for CNI pods too: portmap itself would silently let two pods
        # publish the same port.
        await asyncio.to_thread(self._alloc.reserve, spec.sandbox_id, pod, spec.host_ports, None)
        undo.push("release hostPorts", lambda: asyncio.to_thread(self._alloc.release, spec.sandbox_id))
        call = CniCall(container_id=spec.sandbox_id, netns=str(path), args=self._cni_args(spec),
                       capability_args=self._capability_args(spec))
        # DEL is pushed before ADD: an ADD that fails half-way has already allocated in earlier plugins.
        async def delete() -> None:
            await self._cni.delete(spec.sandbox_id, netns_present=netns.is_netns(path))
        undo.push("CNI DEL", delete)
        result = await self._cni.add(conf, call)
        ips = pod_ips(result)
        if not ips:
            raise Internal(f"CNI network {conf.name!r} ({conf.source}) gave the pod no IP address on eth0")
        return ips

    def _cni_args(self, spec: PodNetworkSpec) -> tuple[tuple[str, str], ...]:
        return (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", spec.namespace), ("K8S_POD_NAME", spec.name),
                ("K8S_POD_INFRA_CONTAINER_ID", spec.sandbox_id), ("K8S_POD_UID", spec.uid))

    def _capability_args(self, spec: PodNetworkSpec) -> dict[str, Any]:
        caps: dict[str, Any] = {
            "portMappings": [{"hostPort": m.host_port, "containerPort": m.container_port,
                              "protocol": m.protocol.value, "hostIP": m.host_ip} for m in spec.host_ports],
        }
        if not spec.dns.empty:
            caps["dns"] = {"servers": list(spec.dns.servers), "searches": list(spec.dns.searches),
                           "options": list(spec.dns.options)}
        bw = spec.bandwidth
        if bw.ingress_rate is not None or bw.egress_rate is not None:
            caps["bandwidth"] = {}
            if bw.ingress_rate is not None:  # burst as containerd sets it: effectively unlimited
                caps["bandwidth"].update(ingressRate=bw.ingress_rate, ingressBurst=UNLIMITED_BURST)
            if bw.egress_rate is not None:
                caps["bandwidth"].update(egressRate=bw.egress_rate, egressBurst=UNLIMITED_BURST)
        cidrs = self._store.get_setting(POD_CIDR_SETTING)
        if cidrs:
            caps["ipRanges"] = [[{"subnet": c.strip()}] for c in cidrs.split(",") if c.strip()]
        if spec.cgroup_parent:
            caps["cgroupPath"] = spec.cgroup_parent
        return caps

    async def check(self, sandbox_id: str) -> None:
        """CHECK the pod's network (CNI CHECK, or the built-in veth/address); raises if it is broken."""
        started = time.monotonic()
        path = self.netns_path(sandbox_id)
        if not netns.is_netns(path):
            raise FailedPrecondition(f"pod sandbox {sandbox_id} has no network namespace at {path}")
        if await asyncio.to_thread(self._cni.load_cache, sandbox_id) is not None:
            await self._cni.check(sandbox_id)
            kind = "cni"
        elif await asyncio.to_thread(self._alloc.ip_of, sandbox_id) is not None:
            await self._builtin_network().check(sandbox_id, path)
            kind = BUILTIN
        else:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} has no network set up")
        self._latency.labels(kind, "check").observe(time.monotonic() - started)

    async def teardown(self, sandbox_id: str) -> None:
        """Undo the pod's network: CNI DEL, built-in teardown, netns removed. Idempotent; a missing netns is fine."""
        started = time.monotonic()
        path = self.netns_path(sandbox_id)
        kind = "none"
        async with self._pod_lock(sandbox_id):
            present = netns.is_netns(path)
            if await self._cni.delete(sandbox_id, netns_present=present):
                kind = "cni"
            if await asyncio.to_thread(self._alloc.ip_of, sandbox_id) is not None:
                await self._builtin_network().teardown(sandbox_id)
                kind = BUILTIN
            else:
                await asyncio.to_thread(self._alloc.release, sandbox_id)  # a CNI pod's hostPort reservations
            try:
                netns.remove(path)
            except RuntimeFailure as e:
                raise Internal(e.message) from None
        self._pod_locks.pop(sandbox_id, None)
        if kind != "none":
            self._latency.labels(kind, "teardown").observe(time.monotonic() - started)

    async def gc(self, known_sandboxes: set[str]) -> list[str]:
        """Tear down the network of every sandbox the daemon no longer knows (crash leftovers)."""
        def owners() -> set[str]:
            ids = self._alloc.sandboxes() | self._cni.cached_containers()
            if self.netns_dir.is_dir():
                ids |= {p.name for p in self.netns_dir.iterdir()}
            return ids
        stale = sorted(await asyncio.to_thread(owners) - known_sandboxes)
        for sandbox_id in stale:
            log.warning("releasing the network of unknown sandbox %s (left by a crash)", sandbox_id)
            try:
                await self.teardown(sandbox_id)
            except Exception as e:  # noqa: BLE001 - one stuck leftover must not stop the others
                log.error("could not release the network of sandbox %s: %s", sandbox_id, e)
        return stale

    async def remove_builtin_network(self) -> None:
        """Delete the built-in bridge and nftables table (uninstall, tests). Pods must be gone."""
        if await asyncio.to_thread(self._alloc.sandboxes):
            raise FailedPrecondition("pods still hold addresses or hostPorts; stop them first")
        await self._builtin_network().remove()

    def close(self) -> None:
        if self._nft is not None:
            self._nft.close()

    @asynccontextmanager
    async def _pod_lock(self, sandbox_id: str) -> AsyncIterator[None]:
        lock = self._pod_locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            yield
