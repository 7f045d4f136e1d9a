"""Status: is the runtime ready, is the network ready, which handlers exist.

Both conditions come from real checks every call (kubelet polls every few
seconds and marks the node NotReady on either false), and each false one
carries a reason and a message that says what to fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Protocol
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config
from cri_shim.network.manager import NetworkStatus
from cri_shim.services.runtime_config import POD_CIDR_SETTING
from cri_shim.store.db import MetadataStore
from runtime.host_report import HostReport

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(frozen=True)
class HandlerInfo:
    """A runtime handler (RuntimeClass) and the features it really supports."""

    name: str
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


def runtime_condition(config: Config, host: HostReport, store: MetadataStore) -> pb.RuntimeCondition:
    problems = list(host.problems)
    for label, path in (("root", config.root_dir), ("state", config.state_dir)):
        if not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{label} directory {path} is not writable")
    try:
        store.query("SELECT 1")
    except Exception as e:  # noqa: BLE001 - any failure of the store means "not ready"
        problems.append(f"metadata store {store.path} does not answer: {e}")
    if problems:
        return pb.RuntimeCondition(type=RUNTIME_READY, status=False, reason="RuntimeNotReady",
                                   message="; ".join(problems))
    return pb.RuntimeCondition(type=RUNTIME_READY, status=True)


class NetworkState(Protocol):
    def status(self) -> NetworkStatus: ...


def network_condition(network: NetworkStatus) -> pb.RuntimeCondition:
    if not network.ready:
        return pb.RuntimeCondition(type=NETWORK_READY, status=False, reason="NetworkPluginNotReady",
                                   message=network.message)
    return pb.RuntimeCondition(type=NETWORK_READY, status=True)


def status(config: Config, host: HostReport, store: MetadataStore, handlers: list[HandlerInfo],
           network_state: NetworkState, request: pb.StatusRequest,
           supplemental_groups_policy: bool = False) -> pb.StatusResponse:
    network = network_state.status()
    conditions = [runtime_condition(config, host, store), network_condition(network)]
    response = pb.StatusResponse(
        status=pb.RuntimeStatus(conditions=conditions),
        runtime_handlers=[
            pb.RuntimeHandler(name=h.name, features=pb.RuntimeHandlerFeatures(
                recursive_read_only_mounts=h.recursive_read_only_mounts, user_namespaces=h.user_namespaces))
            for h in handlers
        ],
        # Each feature advertised here switches on kubelet behaviour and critest specs: only what works.
        features=pb.RuntimeFeatures(supplemental_groups_policy=supplemental_groups_policy),
    )
    if request.verbose:
        # crictl parses values that start with "{" as JSON objects.
        response.info["config"] = config.as_json()
        response.info["host"] = json.dumps(_host_json(host), sort_keys=True)
        response.info["network"] = json.dumps({
            "ready": network.ready, "message": network.message,
            "podCIDR": store.get_setting(POD_CIDR_SETTING) or "",
        }, sort_keys=True)
    return response


def _host_json(host: HostReport) -> dict[str, object]:
    data = dataclasses.asdict(host)
    data["cgroup_mode"] = host.cgroup_mode.value
    return data
