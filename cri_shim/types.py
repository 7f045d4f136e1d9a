"""Identifier types shared across the daemon."""

from __future__ import annotations

from typing import NewType

SandboxId = NewType("SandboxId", str)
ContainerId = NewType("ContainerId", str)
ImageId = NewType("ImageId", str)  # "sha256:<config digest>"
