"""What the servicers need from the running daemon, built once at startup."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cri_shim.config import Config
from cri_shim.images.store import ImageStore
from cri_shim.server.metrics import Metrics
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.services.status import HandlerInfo
from cri_shim.store.db import MetadataStore
from runtime.host_report import HostReport


@dataclass
class DaemonContext:
    config: Config
    store: MetadataStore
    host: HostReport
    metrics: Metrics
    images: ImageStore
    lifecycle: RuntimeState
    handlers: list[HandlerInfo] = field(default_factory=lambda: [HandlerInfo(name="")])
    # CreateContainer resolves Merge/Strict in the image and ContainerStatus reports the user it ran as.
    supplemental_groups_policy: bool = True

    @property
    def image_dirs(self) -> tuple[Path, ...]:
        root = self.config.root_dir
        return (root / "content", root / "snapshots")
