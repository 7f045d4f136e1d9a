"""Sandbox records.

    CREATING ──(RunPodSandbox done)──> READY ──(StopPodSandbox)──> NOTREADY ──(Remove)──> gone
        └──(failure or crash: rollback / restart recovery)──> gone

`config` is the PodSandboxConfig exactly as kubelet sent it: PodSandboxStatus
must echo labels and annotations byte for byte, and CreateContainer receives it
again.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field, replace
from typing import Any

from cri_shim.api import api_pb2 as pb
from cri_shim.store.records import Table
from cri_shim.types import SandboxId

TABLE = Table("sandboxes")


class SandboxState(enum.Enum):
    CREATING = "creating"
    READY = "ready"
    NOTREADY = "notready"


def sandbox_name(meta: pb.PodSandboxMetadata) -> str:
    """The reservation key kubelet's retries reuse: same name, namespace, uid and attempt."""
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


@dataclass(frozen=True)
class Sandbox:
    id: SandboxId
    name: str
    config: pb.PodSandboxConfig
    handler: str
    created_at: int
    state: SandboxState = SandboxState.CREATING
    sandbox_dir: str = ""
    netns_path: str | None = None
    ips: tuple[str, ...] = ()
    cgroup_parent: str = ""
    network_ready: bool = False  # network set up and not yet torn down
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host_network(self) -> bool:
        opts = self.config.linux.security_context.namespace_options
        return opts.network == pb.NODE

    def with_(self, **changes: Any) -> Sandbox:
        return replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "handler": self.handler, "created_at": self.created_at,
            "state": self.state.value, "sandbox_dir": self.sandbox_dir, "netns_path": self.netns_path,
            "ips": list(self.ips), "cgroup_parent": self.cgroup_parent, "network_ready": self.network_ready,
            "extra": self.extra, "config": base64.b64encode(self.config.SerializeToString()).decode(),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sandbox:
        return cls(
            id=SandboxId(row["id"]), name=row["name"], handler=row["handler"], created_at=row["created_at"],
            state=SandboxState(row["state"]), sandbox_dir=row["sandbox_dir"], netns_path=row["netns_path"],
            ips=tuple(row["ips"]), cgroup_parent=row["cgroup_parent"], network_ready=row["network_ready"],
            extra=row["extra"], config=pb.PodSandboxConfig.FromString(base64.b64decode(row["config"])),
        )
