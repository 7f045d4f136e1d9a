"""The pod network used until the CNI/bridge network manager is wired in: loopback only.

A pod-network pod gets its own pinned network namespace (made by
sandbox_run) with loopback up, and no other interface or IP. Port mappings
cannot be honoured without a network, so they are refused rather than
silently ignored.
"""

from __future__ import annotations

import logging

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument

log = logging.getLogger(__name__)


class LoopbackOnlyNetwork:
    async def setup(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> tuple[str, ...]:
        if any(pm.host_port for pm in config.port_mappings):
            raise InvalidArgument("config.port_mappings: host ports need a pod network, and this daemon has no "
                                  "network plugin wired in yet")
        return ()

    async def teardown(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> None:
        return None
