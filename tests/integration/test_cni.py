"""Pod networking through real CNI plugins (Debian's containernetworking-plugins) in real netns."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config, NetworkConfig, ServerConfig
from cri_shim.errors import FailedPrecondition, InvalidArgument, Unavailable
from cri_shim.network.cni import pod_ips
from cri_shim.network.manager import PodNetworkManager
from cri_shim.store.db import MetadataStore
from runtime.linux import netns
from tests.harness.daemon import CNI_BIN_DIRS, make_workdir

NET_NAME = "cst-cni-test"
BRIDGE = "cstcni0"
CONFLIST = {
    "cniVersion": "1.0.0", "name": NET_NAME,
    "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.214.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def pod(name: str, *ports: tuple[int, int]) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="cni-test", uid=f"uid-{name}"),
        port_mappings=[pb.PortMapping(container_port=c, host_port=h) for c, h in ports])


@pytest.fixture
def work() -> Iterator[Path]:
    d = make_workdir("cni")
    (d / "conf").mkdir()
    (d / "conf" / "10-test.conflist").write_text(json.dumps(CONFLIST))
    yield d
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    subprocess.run(["rm", "-rf", d, f"/var/lib/cni/networks/{NET_NAME}"])


def network(work: Path, bin_dirs: list[str] | None = None) -> PodNetworkManager:
    cfg = Config(server=ServerConfig(root=str(work / "root")),
                 network=NetworkConfig(mode="cni", cni_conf_dir=str(work / "conf"),
                                       cni_bin_dirs=bin_dirs or CNI_BIN_DIRS))
    return PodNetworkManager(cfg, MetadataStore.open(work / "meta.db"))


def cached(work: Path) -> list[Path]:
    """The CNI result cache entries left (the cache lives under the root dir, like libcni's)."""
    results = work / "root" / "cni" / "results"
    return list(results.iterdir()) if results.exists() else []


def serve_in(ns: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["nsenter", f"--net={ns}", sys.executable, "-m", "http.server", str(port),
                             "--bind", "0.0.0.0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        probe = subprocess.run(["nsenter", f"--net={ns}", "ss", "-ltn"], capture_output=True, text=True).stdout
        if f":{port} " in probe:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start")


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_pods_get_ips_reachable_from_host_and_each_other_and_host_ports(work: Path) -> None:
    net = network(work)
    ns_a, ns_b = str(work / "ns-a"), str(work / "ns-b")
    before = links()

    async def main() -> None:
        netns.create(ns_a)
        netns.create(ns_b)
        (ip_a,) = await net.setup("a" * 64, ns_a, pod("a", (8080, 18481)))
        (ip_b,) = await net.setup("b" * 64, ns_b, pod("b"))
        assert ip_a.startswith("10.214.") and ip_b.startswith("10.214.") and ip_a != ip_b
        server = serve_in(ns_a, 8080)
        try:
            assert get(f"http://{ip_a}:8080/") == 200                    # host -> pod
            out = subprocess.run(["nsenter", f"--net={ns_b}", sys.executable, "-c",
                                  f"import urllib.request;print(urllib.request.urlopen('http://{ip_a}:8080/').status)"],
                                 capture_output=True, text=True, timeout=20)
            assert out.stdout.strip() == "200", out.stderr               # pod -> pod
            assert get("http://127.0.0.1:18481/") == 200                 # hostPort on loopback
        finally:
            server.kill()
            server.wait()
        for sid, ns, p in (("a" * 64, ns_a, pod("a", (8080, 18481))), ("b" * 64, ns_b, pod("b"))):
            await net.teardown(sid, ns, p)
            await net.teardown(sid, ns, p)  # idempotent
            netns.remove(ns)
        with pytest.raises(OSError):
            get("http://127.0.0.1:18481/")

    asyncio.run(main())
    assert not cached(work)
    assert links() - before <= {BRIDGE}  # no veth left behind
    held = Path(f"/var/lib/cni/networks/{NET_NAME}")
    assert not [p for p in held.iterdir() if p.name[0].isdigit()] if held.exists() else True  # IPs released
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert "18481" not in nat


def test_teardown_after_the_netns_is_gone(work: Path) -> None:
    # Without ipMasq: bridge's DEL can only remove its masquerade chain from inside the netns, so with the
    # netns gone that chain would stay on the host (a plugin limitation, containerd has it too).
    conf = dict(CONFLIST, plugins=[dict(CONFLIST["plugins"][0], ipMasq=False), CONFLIST["plugins"][1]])
    (work / "conf" / "10-test.conflist").write_text(json.dumps(conf))
    net = network(work)
    ns = str(work / "ns")

    async def main() -> None:
        netns.create(ns)
        await net.setup("c" * 64, ns, pod("c"))
        netns.remove(ns)
        await net.teardown("c" * 64, ns, pod("c"))

    asyncio.run(main())
    held = Path(f"/var/lib/cni/networks/{NET_NAME}")
    assert not [p for p in held.iterdir() if p.name[0].isdigit()]


def test_failed_add_is_rolled_back(work: Path) -> None:
    bindir = work / "bin"
    bindir.mkdir()
    failing = bindir / "failing"
    failing.write_text('#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = DEL ] && exit 0\n'
                       'echo \'{"cniVersion":"1.0.0","code":11,"msg":"injected failure","details":"by test"}\'\nexit 1\n')
    failing.chmod(0o755)
    conf = dict(CONFLIST, plugins=[CONFLIST["plugins"][0], {"type": "failing"}])
    (work / "conf" / "10-test.conflist").write_text(json.dumps(conf))
    net = network(work, [str(bindir), *CNI_BIN_DIRS])
    ns = str(work / "ns")
    before = links()

    async def main() -> None:
        netns.create(ns)
        try:
            with pytest.raises(Unavailable, match="injected failure \\(by test\\)"):
                await net.setup("d" * 64, ns, pod("d"))
        finally:
            netns.remove(ns)

    asyncio.run(main())
    assert links() - before <= {BRIDGE}
    held = Path(f"/var/lib/cni/networks/{NET_NAME}")
    assert not [p for p in held.iterdir() if p.name[0].isdigit()]
    assert not cached(work)


def test_bad_input_and_missing_config(work: Path) -> None:
    net = network(work)
    bad = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x", namespace="y", uid="z"),
                              port_mappings=[pb.PortMapping(container_port=80, host_port=70000)])
    with pytest.raises(InvalidArgument, match="host_port: must be 0-65535.*got 70000"):
        asyncio.run(net.setup("e" * 64, "/nonexistent", bad))
    (work / "conf" / "10-test.conflist").unlink()
    with pytest.raises(FailedPrecondition, match="no network config found"):
        asyncio.run(net.setup("e" * 64, "/nonexistent", pod("e")))


def test_pod_ips_keeps_the_pod_interface_addresses_ipv4_first() -> None:
    result = {"interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
              "ips": [{"address": "fd00::5/64", "interface": 2}, {"address": "10.1.0.5/24", "interface": 2},
                      {"address": "10.1.0.1/24", "interface": 0}]}
    assert pod_ips(result) == ("10.1.0.5", "fd00::5")
