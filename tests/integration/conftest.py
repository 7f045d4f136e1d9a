from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemon import make_workdir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("tests/integration needs root and the real kernel (run `make test` as root)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private directory under the test base dir (CRI_SHIM_TEST_TMP), removed afterwards."""
    d = make_workdir("w")
    yield d
    shutil.rmtree(d, ignore_errors=True)
