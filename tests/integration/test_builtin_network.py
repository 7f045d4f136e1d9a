"""The built-in network (bridge + veth + nftables) with real namespaces and real traffic."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config, NetworkConfig, ServerConfig
from cri_shim.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from cri_shim.network.manager import PodNetworkManager
from cri_shim.store.db import MetadataStore
from runtime.linux import netns
from tests.harness.daemon import make_workdir
from tests.integration.test_cni import serve_in

BRIDGE, TABLE, SUBNET = "cstbr0", "cst_builtin", "10.215.0.0/16"


def pod(name: str, *ports: tuple[int, int], host_ip: str = "") -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="builtin-test", uid=f"uid-{name}"),
        port_mappings=[pb.PortMapping(container_port=c, host_port=h, host_ip=host_ip) for c, h in ports])


@pytest.fixture
def work() -> Iterator[Path]:
    d = make_workdir("bnet")
    yield d
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", TABLE], capture_output=True)
    subprocess.run(["rm", "-rf", str(d)])


def manager(work: Path, subnet: str = SUBNET) -> tuple[PodNetworkManager, MetadataStore]:
    cfg = Config(server=ServerConfig(root=str(work / "root")),
                 network=NetworkConfig(mode="builtin", cni_conf_dir=str(work / "none"), builtin_subnet=subnet,
                                       builtin_bridge=BRIDGE, nft_table=TABLE))
    (work / "root").mkdir(exist_ok=True)
    store = MetadataStore.open(work / "meta.db")
    return PodNetworkManager(cfg, store), store


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


def host_ip() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if BRIDGE not in line and "cst" not in line.split()[1]:
            return line.split()[3].split("/")[0]
    pytest.skip("no global IPv4 address on this host to test hostPort from a host address")


def veths() -> set[str]:
    return {n.name for n in Path("/sys/class/net").iterdir() if n.name.startswith("vcs")}


def test_traffic_hostports_and_clean_teardown(work: Path) -> None:
    net, store = manager(work)
    ns_a, ns_b = str(work / "a"), str(work / "b")
    before = veths()

    async def main() -> None:
        netns.create(ns_a)
        netns.create(ns_b)
        (ip_a,) = await net.setup("a" * 64, ns_a, pod("a", (8080, 18491)))
        (ip_b,) = await net.setup("b" * 64, ns_b, pod("b"))
        assert ip_a != ip_b and ip_a.startswith("10.215.") and ip_b.startswith("10.215.")
        server = serve_in(ns_a, 8080)
        try:
            assert get(f"http://{ip_a}:8080/") == 200                         # host -> pod
            out = subprocess.run(["nsenter", f"--net={ns_b}", sys.executable, "-c",
                                  f"import urllib.request as u;print(u.urlopen('http://{ip_a}:8080/').status)"],
                                 capture_output=True, text=True, timeout=20)
            assert out.stdout.strip() == "200", out.stderr                    # pod -> pod
            assert get("http://127.0.0.1:18491/") == 200                      # hostPort on loopback
            assert get(f"http://{host_ip()}:18491/") == 200                   # hostPort on a host address
        finally:
            server.kill()
            server.wait()
        for sid, ns, p in (("a" * 64, ns_a, pod("a", (8080, 18491))), ("b" * 64, ns_b, pod("b"))):
            await net.teardown(sid, ns, p)
            await net.teardown(sid, ns, p)
            netns.remove(ns)

    asyncio.run(main())
    assert veths() == before
    assert store.query("SELECT * FROM network_ips") == [] and store.query("SELECT * FROM network_hostports") == []
    rules = subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True, text=True).stdout
    assert "18491" not in rules


def test_taken_host_port_is_refused_and_nothing_is_half_applied(work: Path) -> None:
    net, store = manager(work)
    ns_a, ns_b = str(work / "a"), str(work / "b")
    before = veths()

    async def main() -> None:
        netns.create(ns_a)
        netns.create(ns_b)
        try:
            await net.setup("a" * 64, ns_a, pod("a", (80, 18492)))
            with pytest.raises(AlreadyExists, match="18492"):
                await net.setup("b" * 64, ns_b, pod("b", (81, 18493), (80, 18492)))
            # the failed pod holds nothing: not 18493, not an IP, not a veth
            assert {r["host_port"] for r in store.query("SELECT host_port FROM network_hostports")} == {18492}
            assert len(store.query("SELECT * FROM network_ips")) == 1
            assert len(veths() - before) == 1
            with pytest.raises(InvalidArgument, match="protocol"):
                await net.setup("c" * 64, ns_b, pb.PodSandboxConfig(
                    metadata=pb.PodSandboxMetadata(name="c", namespace="n", uid="u"),
                    port_mappings=[pb.PortMapping(protocol=7, container_port=1, host_port=2)]))
            with pytest.raises(InvalidArgument, match="metadata.name"):
                await net.setup("d" * 64, ns_b, pod("evil;K8S_POD_NAME=x"))
        finally:
            await net.teardown("a" * 64, ns_a, pod("a", (80, 18492)))
            netns.remove(ns_a)
            netns.remove(ns_b)

    asyncio.run(main())
    assert veths() == before


def test_allocations_survive_a_restart_and_are_not_reused(work: Path) -> None:
    net, store = manager(work)
    ns_a, ns_b = str(work / "a"), str(work / "b")

    async def main() -> None:
        netns.create(ns_a)
        netns.create(ns_b)
        (ip_a,) = await net.setup("a" * 64, ns_a, pod("a"))
        store.close()
        again, store2 = manager(work)  # a new daemon on the same store
        (ip_b,) = await again.setup("b" * 64, ns_b, pod("b"))
        assert ip_b != ip_a
        for sid, ns in (("a" * 64, ns_a), ("b" * 64, ns_b)):
            await again.teardown(sid, ns, pod(sid[0]))
            netns.remove(ns)
        store2.close()

    asyncio.run(main())


def test_overlapping_subnet_is_refused(work: Path) -> None:
    route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout.split()
    dev_net = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", route[4]], capture_output=True,
                             text=True).stdout.split()[3]
    net, _ = manager(work, subnet=str(ipaddress.ip_interface(dev_net).network))
    ns = str(work / "a")
    netns.create(ns)
    try:
        with pytest.raises(FailedPrecondition, match="overlaps"):
            asyncio.run(net.setup("a" * 64, ns, pod("a")))
    finally:
        netns.remove(ns)
