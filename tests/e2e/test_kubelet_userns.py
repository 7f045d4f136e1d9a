"""kubelet v1.37 runs a `hostUsers: false` pod on cri-shim: kubelet picks the pod's id range, sends it as
userns_options (and as the mappings of its volume mounts), and the pod runs as root inside its own user
namespace with a writable emptyDir.

Its own cri-shim, kubelet, bridge (`csuserns2`) and nft table, so it can run beside tests/e2e/test_kubelet.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_kubelet import NODE, Env, manifest, teardown
from tests.harness.daemon import make_workdir
from tests.harness.kubelet import Kubelet, free_port, free_subnet
from tests.harness.lifecycle_env import BUSYBOX, lifecycle_daemon, start_mirror

pytestmark = pytest.mark.timeout(600)

BRIDGE = "csuserns2"
NFT_TABLE = "cri_shim_userns_e2e"
SCRIPT = ("cat /proc/self/uid_map; id -u; echo hi > /data/f && stat -c 'data-owner=%u' /data/f; "
          "stat -c 'image-owner=%u' /bin/sh; echo done; exec sleep 3600")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    mirror = start_mirror((BUSYBOX,))
    daemon = lifecycle_daemon(mirror, extra={"server": {"log_level": "info"}, "network": {
        "mode": "builtin", "builtin_bridge": BRIDGE, "builtin_subnet": free_subnet("10.243.0.0/24"),
        "nft_table": NFT_TABLE}})
    kubelet: Kubelet | None = None
    try:
        daemon.start()
        kubelet = Kubelet(workdir=make_workdir("kubelet"), runtime_endpoint=daemon.endpoint, node_name=NODE,
                          cgroup_driver="cgroupfs", overrides={"featureGates": {"UserNamespacesSupport": True}})
        e = Env(mirror, daemon, kubelet, free_port(), free_port(), "")
        kubelet.start()
        kubelet.add_pod(manifest("userns", [
            {"name": "c", "command": ["sh", "-c", SCRIPT], "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        ], volumes=[{"name": "data", "emptyDir": {}}], hostUsers=False))
        yield e
    finally:
        teardown(mirror, daemon, kubelet, BRIDGE, NFT_TABLE)


def test_host_users_false_pod_runs_as_root_in_its_own_user_namespace(env: Env) -> None:
    env.wait("pod userns running", lambda: env.running("userns", "c"), timeout=120)
    out = env.wait("its output", lambda: (lambda b: b if b"done" in b else None)(env.kubectl_logs("userns", "c")))
    lines = out.decode().splitlines()
    inside, host, size = lines[0].split()
    assert inside == "0" and int(host) >= 65536 and int(size) == 65536, lines   # kubelet's range, never host root
    assert lines[1:4] == ["0", "data-owner=0", "image-owner=0"], lines
    # What kubelet sent, as the runtime reports it back.
    pod_id = env.crictl_json("pods", "--name", f"userns-{NODE}", "-o", "json")["items"][0]["id"]
    userns = env.crictl_json("inspectp", pod_id)["status"]["linux"]["namespaces"]["options"]["usernsOptions"]
    assert userns["mode"] == "POD" and userns["uids"][0]["hostId"] == int(host)
    info = env.crictl_json("inspect", env.container_id("userns", "c"))["info"]
    # kubelet sends the volume's mount with the pod's mappings: an idmapped bind, so what the container's root
    # writes is stored as host root, like the rest of the kubelet-made volume.
    (data,) = [m for m in info["runtimeSpec"]["mounts"] if m["destination"] == "/data"]
    assert "idmap" in data["options"], data
    assert (Path(data["source"]) / "f").stat().st_uid == 0
    pid = int(info["pid"])
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert fields["Uid"].split()[0] == host
