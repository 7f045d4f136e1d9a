"""Which network a pod gets: a CNI network, or the built-in bridge.

`network.mode` decides: "cni" uses the CNI config in the conf dir (and
NetworkReady is false without one), "builtin" always uses the built-in bridge,
"auto" (the default) uses CNI when a usable config exists and the built-in
bridge otherwise — a node works out of the box and switches to the operator's
CNI as soon as one is installed (new pods only; running pods keep theirs).

Teardown does not need to know which network a pod got: each network keeps
its own record of the pod (the CNI result cache, the built-in allocations) and
its teardown is a no-op for pods it never set up.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config
from cri_shim.network.allocations import Allocations
from cri_shim.network.builtin import BuiltinNetwork, BuiltinSettings
from cri_shim.network.cni import CniNetwork
from cri_shim.network.cni_config import find_network_config
from cri_shim.network.nft import Nft
from cri_shim.network.types import pod_from_cri, validate
from cri_shim.store.db import MetadataStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    message: str


class PodNetworkManager:
    def __init__(self, config: Config, store: MetadataStore, registry: CollectorRegistry | None = None) -> None:
        n = config.network
        self._mode = n.mode
        self._conf_dir, self._bin_dirs = Path(n.cni_conf_dir), n.cni_bin_dirs
        self.cni = CniNetwork(self._conf_dir, self._bin_dirs, config.root_dir / "cni", registry=registry,
                              call_timeout=n.cni_plugin_timeout)
        settings = BuiltinSettings(subnet=ipaddress.IPv4Network(n.builtin_subnet), bridge=n.builtin_bridge,
                                   nft_table=n.nft_table, masquerade=n.builtin_masquerade)
        self.builtin = BuiltinNetwork(settings, Allocations(store), Nft())

    def _use_cni(self) -> bool:
        if self._mode == "builtin":
            return False
        return self._mode == "cni" or find_network_config(self._conf_dir, self._bin_dirs).ready

    async def setup(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> tuple[str, ...]:
        spec = pod_from_cri(sandbox_id, config, Path("/"))
        validate(spec)  # before anything exists: bad ports, DNS, or CNI_ARGS injection in the metadata
        if self._use_cni():
            return await self.cni.setup(sandbox_id, netns_path, config, config.linux.cgroup_parent)
        return await self.builtin.setup(spec, Path(netns_path))

    async def teardown(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> None:
        await self.cni.teardown(sandbox_id, netns_path, config)
        await self.builtin.teardown(sandbox_id)

    def status(self) -> NetworkStatus:
        found = find_network_config(self._conf_dir, self._bin_dirs)
        if found.ready or self._mode == "cni":
            return NetworkStatus(found.ready, found.message)
        s = self.builtin.settings
        return NetworkStatus(True, f"built-in network (bridge {s.bridge}, subnet {s.subnet}); "
                                   f"CNI not used: {found.message}")
