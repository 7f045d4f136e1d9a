"""Suite-wide fixtures: a fresh daemon per test (or module), and the leak check."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.harness import leaks
from tests.harness.daemon import TMP_BASE, Daemon, new_daemon


@pytest.fixture(scope="session", autouse=True)
def leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the run if anything the tests made (mounts, netns, cgroups, links, processes, dirs) is left."""
    before = leaks.snapshot(TMP_BASE)
    yield
    if request.session.testsfailed:
        return  # a failing test may legitimately leave state behind; report that failure, not a leak
    left = leaks.leaked(before, TMP_BASE)
    assert not left, f"resources leaked by the test run: {left}"


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = new_daemon().start()
    yield d
    stop_and_clean(d)


def stop_and_clean(d: Daemon) -> None:
    try:
        code = d.stop()
        assert code == 0, f"daemon exited with {code}:\n{d.log_tail()}"
        # A traceback in the daemon log is a bug of ours even if every RPC looked fine.
        assert "Traceback" not in d.log_text(), d.log_tail(200)
    finally:
        shutil.rmtree(d.workdir, ignore_errors=True)
