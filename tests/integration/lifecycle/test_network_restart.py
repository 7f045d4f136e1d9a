"""Pod networks across a daemon crash: a RunPodSandbox killed right after the network was set up leaves no
IP held, no CNI cache entry and no netns behind once the daemon is back."""

from __future__ import annotations

import json
import os

from tests.harness.lifecycle_env import pod_config
from tests.integration.lifecycle.test_restart import Restartable, rs  # noqa: F401 - the fixture

def holders(rs: Restartable) -> dict[str, str]:
    """host-local's reservations on the lifecycle network: IP -> the container (sandbox) id holding it."""
    assert rs.daemon is not None
    d = rs.daemon.workdir / "ipam" / "cst-lifecycle"     # the lifecycle conflist's dataDir
    if not d.is_dir():
        return {}
    return {p.name: p.read_text().split()[0] for p in d.iterdir() if p.name[0].isdigit()}


def test_crash_after_network_setup_releases_the_ip_at_restart(rs: Restartable) -> None:
    cri = rs.start("sandbox_run.after_network=kill")
    rs.expect_crash(lambda: cri.run_pod(pod_config("crash-net")))
    assert rs.daemon is not None
    results = rs.daemon.root / "cni" / "results"
    (entry,) = list(results.iterdir())          # the crashed pod's ADD finished: its result is cached ...
    sandbox_id = json.loads(entry.read_text())["containerId"]
    assert sandbox_id in holders(rs).values()     # ... and host-local holds an IP for it
    cri = rs.start()
    assert cri.pods() == []
    assert sandbox_id not in holders(rs).values(), "the crashed pod's IP is still held"
    assert os.listdir(results) == []
    assert not (rs.daemon.state / "netns" / sandbox_id).exists()
