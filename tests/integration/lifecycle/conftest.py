"""Fixtures for the pod/container lifecycle tests: one registry mirror per session, one daemon per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import stop_and_clean
from tests.harness.daemon import Daemon
from tests.harness.lifecycle_env import Cri, Mirror, lifecycle_daemon, start_mirror


@pytest.fixture(scope="session")
def mirror() -> Iterator[Mirror]:
    m = start_mirror()
    yield m
    m.close()


@pytest.fixture(scope="module")
def daemon(mirror: Mirror) -> Iterator[Daemon]:
    d = lifecycle_daemon(mirror).start()
    yield d
    stop_and_clean(d)


@pytest.fixture
def cri(daemon: Daemon) -> Iterator[Cri]:
    c = Cri(daemon.client())
    c.pull()
    yield c
    c.clean()
    c.close()
