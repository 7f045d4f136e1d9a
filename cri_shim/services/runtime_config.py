"""RuntimeConfig and UpdateRuntimeConfig: runtime-wide settings shared with kubelet."""

from __future__ import annotations

import ipaddress
import logging

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config
from cri_shim.errors import InvalidArgument
from cri_shim.store.db import MetadataStore

log = logging.getLogger(__name__)

POD_CIDR_SETTING = "pod_cidr"


def runtime_config(config: Config) -> pb.RuntimeConfigResponse:
    # CgroupDriver's zero value is SYSTEMD: always set the field explicitly.
    driver = pb.CGROUPFS if config.runtime.cgroup_driver == "cgroupfs" else pb.SYSTEMD
    return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))


def update_runtime_config(store: MetadataStore, request: pb.UpdateRuntimeConfigRequest) -> None:
    """Store the node's pod CIDR(s); kubelet pushes it at startup and whenever it changes."""
    cidr = request.runtime_config.network_config.pod_cidr.strip()
    if not cidr:
        return  # kubelet sends an empty CIDR when the node has none yet: nothing to record
    for part in cidr.split(","):
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            raise InvalidArgument(f"runtime_config.network_config.pod_cidr: {part.strip()!r} is not a CIDR "
                                  "(expected e.g. 10.244.0.0/24, or two comma-separated CIDRs for dual stack)") from None
    if store.get_setting(POD_CIDR_SETTING) != cidr:
        store.set_setting(POD_CIDR_SETTING, cidr)
        log.info("pod CIDR set to %s", cidr)
