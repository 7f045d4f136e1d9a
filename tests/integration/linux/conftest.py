"""Fixtures for the native Linux runtime tests: a busybox rootfs and a Lab per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemon import TMP_BASE
from tests.harness.linux_lab import Lab
from tests.harness.rootfs import build_busybox_rootfs


@pytest.fixture(scope="session")
def busybox_rootfs() -> Iterator[Path]:
    TMP_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="rootfs-", dir=TMP_BASE))
    yield build_busybox_rootfs(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lab(busybox_rootfs: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(busybox_rootfs)
    yield lab
    left = lab.leftovers()
    lab.close()
    assert not left, f"the runtime left resources behind: {left}"
