"""PodNetworkManager: which network a pod gets (a CNI network or the built-in bridge), and its teardown.

`network.mode` decides at setup: "cni" uses the CNI config in the conf dir
(NetworkReady is false and setup fails without one), "builtin" always uses
the built-in bridge, "auto" (the default) uses CNI when a usable config exists
and the built-in bridge otherwise, so a node works out of the box and switches
to the operator's CNI as soon as one is installed (new pods only).

Teardown never needs to know which network a pod got: the CNI result cache
and the store's allocations each remember their pods, and each teardown is a
no-op for pods it never set up. So teardown works after a config change or a
daemon restart, is idempotent, and tolerates a netns that is already gone.

The lifecycle (`cri_shim.services.sandbox_run`) owns the network namespace:
it creates the pin, calls `setup`, and removes the pin after `teardown`
(the `PodNetwork` protocol of `cri_shim.services.runtime_state`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config
from cri_shim.errors import FailedPrecondition, Internal
from cri_shim.network.allocations import Allocations
from cri_shim.network.cni import CniCall, CniRunner, pod_ips
from cri_shim.network.cni_config import NetworkConfigList
from cri_shim.network.conf_watch import ConfWatcher
from cri_shim.network.nft import Nft, NftError
from cri_shim.network.types import PodNetworkSpec, PodNetworkStatus, pod_from_cri, validate
from cri_shim.services.runtime_config import POD_CIDR_SETTING
from cri_shim.services.undo import UndoStack
from cri_shim.store.db import MetadataStore

if TYPE_CHECKING:   # the built-in network is Linux only (netlink, nftables): imported when first used
    from cri_shim.network.builtin import BuiltinNetwork

log = logging.getLogger(__name__)

BUILTIN = "builtin"
WINDOWS_NO_BUILTIN = ("the built-in network (bridge, veth, nftables) exists only on Linux nodes; on a Windows node "
                      "put a CNI network configuration (win-bridge, nat) in network.cni_conf_dir")
CNI = "cni"
NETWORK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
NOT_READY_REASON = "NetworkPluginNotReady"
UNLIMITED_BURST = 2**32 - 1  # bits; the burst containerd passes along with a bandwidth annotation
HCN_NAMESPACE = re.compile(r"^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")   # a Windows pod's netns


@dataclass(frozen=True)
class NetworkStatus:
    """NetworkReady for the Status RPC; `message` says what to fix when not ready."""

    ready: bool
    message: str
    reason: str = ""


class PodNetworkManager:
    def __init__(self, config: Config, store: MetadataStore, registry: CollectorRegistry | None = None,
                 builtin_available: bool = True) -> None:
        n = config.network
        self._builtin_available = builtin_available   # False on a Windows node: no bridge/veth/nftables there
        registry = registry if registry is not None else CollectorRegistry()
        self.mode = n.mode
        self.netns_dir = config.state_dir / "netns"   # where the lifecycle pins pods' netns (for gc)
        self._watcher = ConfWatcher(Path(n.cni_conf_dir), n.cni_bin_dirs)
        self._store = store
        self._alloc = Allocations(store)
        self.cni = CniRunner(n.cni_bin_dirs, config.root_dir / "cni", n.cni_plugin_timeout, registry)
        self._network_config = n
        self._builtin: BuiltinNetwork | None = None   # made on first use: CNI-only nodes need no libnftables
        self._nft: Nft | None = None
        self._latency = Histogram("cri_shim_pod_network_duration_seconds",
                                  "Time to set up, check or tear down one pod's network, by network kind.",
                                  ["network", "operation"], buckets=NETWORK_BUCKETS, registry=registry)

    # ------------------------------------------------------------ the lifecycle's PodNetwork protocol

    async def setup(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> tuple[str, ...]:
        """Attach the pod's netns to its network; returns its IPs (primary first). Undoes itself on failure."""
        spec = pod_from_cri(sandbox_id, config)
        return (await self.setup_pod(spec, Path(netns_path))).ips

    async def teardown(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> None:
        """Release everything `setup` made (CNI DEL, IP, veth, hostPorts). Idempotent."""
        await self.teardown_pod(sandbox_id, Path(netns_path) if netns_path else None)

    def status(self) -> NetworkStatus:
        """Ready when a new pod would get a network now; else an actionable message."""
        found = self._watcher.current()
        if self.mode != BUILTIN and found.ready:
            return NetworkStatus(True, found.message)
        if self.mode == CNI:
            return NetworkStatus(False, found.message, NOT_READY_REASON)
        problem = self._builtin_problem()
        cni_note = "" if self.mode == BUILTIN else f"{found.message}; "
        if problem:
            return NetworkStatus(False, f"{cni_note}the built-in network cannot be used: {problem}", NOT_READY_REASON)
        n = self._network_config
        return NetworkStatus(True, f"{cni_note}pods use the built-in network (bridge {n.builtin_bridge}, "
                                   f"subnet {n.builtin_subnet})")

    # ------------------------------------------------------------ per pod

    async def setup_pod(self, spec: PodNetworkSpec, netns_path: Path) -> PodNetworkStatus:
        """Give the pod in `netns_path` an IP (and its hostPorts). All or nothing."""
        validate(spec)  # before anything exists: bad ports, DNS, or CNI_ARGS injection in the metadata
        if spec.host_network:
            return PodNetworkStatus(ips=(), network="host")
        conf = self._choose()
        started = time.monotonic()
        if conf is None:
            ips = await self._builtin_network().setup(spec, netns_path)   # undoes its own steps on failure
            kind, name = BUILTIN, BUILTIN
        else:
            ips = await self._cni_add(spec, conf, netns_path)
            kind, name = CNI, conf.name
        self._latency.labels(kind, "setup").observe(time.monotonic() - started)
        log.info("pod %s/%s (%s): network %s, %s", spec.namespace, spec.name, spec.sandbox_id[:13], name,
                 ", ".join(ips) or "no IP")
        return PodNetworkStatus(ips=ips, network=name)

    async def teardown_pod(self, sandbox_id: str, netns_path: Path | None) -> None:
        started = time.monotonic()
        present = netns_path is not None and _netns_present(netns_path)
        kind = ""
        if await self.cni.delete(sandbox_id, netns_present=present):
            kind = CNI
        if await asyncio.to_thread(self._alloc.ip_of, sandbox_id) is not None:
            await self._builtin_network().teardown(sandbox_id)
            kind = BUILTIN
        else:
            await asyncio.to_thread(self._alloc.release, sandbox_id)   # a CNI pod's hostPort reservations
        if kind:
            self._latency.labels(kind, "teardown").observe(time.monotonic() - started)

    async def check(self, sandbox_id: str, netns_path: Path) -> None:
        """CHECK the pod's network (CNI CHECK, or the built-in veth and address); raises if it is broken."""
        started = time.monotonic()
        if not _netns_present(netns_path):
            raise FailedPrecondition(f"pod sandbox {sandbox_id} has no network namespace at {netns_path}")
        if await asyncio.to_thread(self.cni.load_cache, sandbox_id) is not None:
            await self.cni.check(sandbox_id)
            kind = CNI
        elif await asyncio.to_thread(self._alloc.ip_of, sandbox_id) is not None:
            await self._builtin_network().check(sandbox_id, netns_path)
            kind = BUILTIN
        else:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} has no network set up")
        self._latency.labels(kind, "check").observe(time.monotonic() - started)

    async def gc(self, known_sandboxes: set[str]) -> list[str]:
        """Release the network of every sandbox the daemon no longer knows (crash leftovers); returns their ids."""
        owners = await asyncio.to_thread(lambda: self._alloc.sandboxes() | self.cni.cached_containers())
        stale = sorted(owners - known_sandboxes)
        for sandbox_id in stale:
            log.warning("releasing the network of unknown sandbox %s (left by a crash)", sandbox_id)
            try:
                await self.teardown_pod(sandbox_id, self.netns_dir / sandbox_id)
            except Exception as e:  # noqa: BLE001 - one stuck leftover must not keep the others
                log.error("could not release the network of sandbox %s: %s", sandbox_id, e)
        return stale

    async def watch(self, interval: float = 1.0) -> None:
        """Background task: notice (and log) CNI config changes as they happen. Cancel to stop."""
        await self._watcher.run(interval)

    async def remove_builtin_network(self) -> None:
        """Delete the built-in bridge and nftables table (uninstall, tests). Pods must be gone."""
        if await asyncio.to_thread(self._alloc.sandboxes):
            raise FailedPrecondition("pods still hold addresses or hostPorts; stop them first")
        await self._builtin_network().remove()

    def close(self) -> None:
        if self._builtin is not None:
            self._builtin.close()
            self._builtin = None
        if self._nft is not None:
            self._nft.close()
            self._nft = None

    # ------------------------------------------------------------ helpers

    def _choose(self) -> NetworkConfigList | None:
        """The CNI network new pods join, or None for the built-in one."""
        if self.mode == BUILTIN:
            return None
        found = self._watcher.current()
        if found.config is not None:
            return found.config
        if self.mode == CNI:
            raise FailedPrecondition(f"the pod network is not ready: {found.message}")
        return None

    def _builtin_network(self) -> BuiltinNetwork:
        if not self._builtin_available:
            raise FailedPrecondition(WINDOWS_NO_BUILTIN)
        if self._builtin is None:
            from cri_shim.network.builtin import BuiltinNetwork, BuiltinSettings   # Linux only (pyroute2)
            n = self._network_config
            settings = BuiltinSettings(subnet=ipaddress.IPv4Network(n.builtin_subnet), bridge=n.builtin_bridge,
                                       nft_table=n.nft_table, masquerade=n.builtin_masquerade)
            self._nft = Nft()
            self._builtin = BuiltinNetwork(settings, self._alloc, self._nft)
        return self._builtin

    def _builtin_problem(self) -> str:
        if not self._builtin_available:
            return WINDOWS_NO_BUILTIN
        try:
            self._builtin_network()
        except NftError as e:
            return str(e)
        return ""

    async def _cni_add(self, spec: PodNetworkSpec, conf: NetworkConfigList, netns_path: Path) -> tuple[str, ...]:
        pod = f"{spec.namespace}/{spec.name}"
        async with UndoStack(f"CNI setup of {spec.sandbox_id}") as undo:
            # hostPorts are reserved in the store for CNI pods too: portmap would let two pods publish one port.
            await asyncio.to_thread(self._alloc.reserve, spec.sandbox_id, pod, spec.host_ports, None)
            undo.push("release hostPorts", lambda: asyncio.to_thread(self._alloc.release, spec.sandbox_id))

            async def delete() -> None:
                await self.cni.delete(spec.sandbox_id, netns_present=_netns_present(netns_path))
            # DEL is pushed before ADD: an ADD that fails half-way has already allocated in earlier plugins.
            undo.push("CNI DEL", delete)
            call = CniCall(container_id=spec.sandbox_id, netns=str(netns_path), args=_cni_args(spec),
                           capability_args=self._capability_args(spec))
            ips = pod_ips(await self.cni.add(conf, call))
            if not ips:
                raise Internal(f"CNI network {conf.name!r} ({conf.source}) gave the pod no IP address on eth0")
            undo.commit()
        return ips

    def _capability_args(self, spec: PodNetworkSpec) -> dict[str, Any]:
        """runtimeConfig by capability name; each plugin gets only those it declares."""
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
            if bw.ingress_rate is not None:
                caps["bandwidth"].update(ingressRate=bw.ingress_rate, ingressBurst=UNLIMITED_BURST)
            if bw.egress_rate is not None:
                caps["bandwidth"].update(egressRate=bw.egress_rate, egressBurst=UNLIMITED_BURST)
        cidrs = self._store.get_setting(POD_CIDR_SETTING)
        if cidrs:
            caps["ipRanges"] = [[{"subnet": c.strip()}] for c in cidrs.split(",") if c.strip()]
        if spec.cgroup_parent:
            caps["cgroupPath"] = spec.cgroup_parent
        return caps


def _netns_present(netns_path: Path) -> bool:
    """A Linux netns pin, or a Windows pod's HCN namespace GUID (the daemon deletes that only after CNI DEL)."""
    if HCN_NAMESPACE.match(str(netns_path)):
        return True
    from runtime.linux import netns   # only Linux pods have netns pins
    return netns.is_netns(netns_path)


def _cni_args(spec: PodNetworkSpec) -> tuple[tuple[str, str], ...]:
    return (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", spec.namespace), ("K8S_POD_NAME", spec.name),
            ("K8S_POD_INFRA_CONTAINER_ID", spec.sandbox_id), ("K8S_POD_UID", spec.uid))
