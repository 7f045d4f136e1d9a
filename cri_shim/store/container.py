"""Container records.

    CREATING ──> CREATED ──(start)──> RUNNING ──(exit)──> EXITED ──(remove)──> gone
       │                                  └──(monitor lost)──> UNKNOWN
       └──(failure or crash)──> rollback / restart recovery ──> gone

The immutable part (config, image, paths) is written once; the status part
(state, times, exit code, reason) changes through `with_()` + `RecordStore.put`.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field, replace
from typing import Any

from cri_shim.api import api_pb2 as pb
from cri_shim.store.records import Table
from cri_shim.types import ContainerId, ImageId, SandboxId

TABLE = Table("containers")


class ContainerState(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


CRI_STATE = {
    ContainerState.CREATED: pb.CONTAINER_CREATED,
    ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    ContainerState.EXITED: pb.CONTAINER_EXITED,
    ContainerState.UNKNOWN: pb.CONTAINER_UNKNOWN,
}


def container_name(sandbox_id: str, meta: pb.ContainerMetadata) -> str:
    """(name, attempt) is unique per sandbox for the sandbox's lifetime."""
    return f"{sandbox_id}_{meta.name}_{meta.attempt}"


@dataclass(frozen=True)
class Container:
    id: ContainerId
    sandbox_id: SandboxId
    name: str
    config: pb.ContainerConfig
    image_id: ImageId
    image_name: str            # what the user asked for (tag, digest or id), echoed as Container.image
    image_ref: str             # = image_id since CRI 1.36 (Image Identifier Consistency)
    created_at: int
    log_path: str = ""         # absolute, or "" when the container has no log
    bundle_dir: str = ""
    state: ContainerState = ContainerState.CREATING
    pid: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    resources: dict[str, Any] = field(default_factory=dict)  # OCI linux.resources currently applied
    user: dict[str, Any] = field(default_factory=dict)       # {"uid", "gid", "groups"} as resolved
    extra: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> Container:
        return replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in (
            "id", "sandbox_id", "name", "image_id", "image_name", "image_ref", "created_at", "log_path",
            "bundle_dir", "pid", "started_at", "finished_at", "exit_code", "reason", "message", "resources",
            "user", "extra")}
        row["state"] = self.state.value
        row["config"] = base64.b64encode(self.config.SerializeToString()).decode()
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Container:
        values = dict(row)
        values["state"] = ContainerState(row["state"])
        values["config"] = pb.ContainerConfig.FromString(base64.b64decode(row["config"]))
        return cls(**values)
