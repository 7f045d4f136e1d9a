"""tests/e2e: a real kubelet (built by `make kubelet`) in standalone mode against a real cri-shim."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if items and os.geteuid() != 0:
        raise pytest.UsageError("tests/e2e runs kubelet and cri-shim for real and needs root (run `make test` as root)")
