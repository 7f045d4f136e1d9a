"""Pure logic of pod networking: config and request validation, CNI results and stdin, IP/hostPort allocations."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim import config
from cri_shim.api import api_pb2 as pb
from cri_shim.errors import AlreadyExists, ConfigError, InvalidArgument, ResourceExhausted
from cri_shim.network.allocations import Allocations
from cri_shim.network.cni import _netconf, pod_ips, version_tuple
from cri_shim.network.conf_watch import ConfWatcher
from cri_shim.network.types import PortMapping, PortProtocol, parse_quantity, pod_from_cri, validate
from cri_shim.store.db import MetadataStore

SID = "a" * 64


def load(tmp_path: Path, network: str) -> config.Config:
    f = tmp_path / "c.toml"
    f.write_text("[network]\n" + network + "\n")
    return config.load(f)


@pytest.mark.parametrize("line, message", [
    ('mode = "calico"', "network.mode: must be one of auto, cni, builtin"),
    ('builtin_subnet = "10.88.0.1/16"', "network.builtin_subnet: '10.88.0.1/16' is not an IPv4 subnet"),
    ('builtin_subnet = "fd00::/64"', "is IPv6; the built-in network is IPv4 only"),
    ('builtin_subnet = "10.0.0.0/31"', "prefix length must be 8-30"),
    ('builtin_subnet = "127.0.0.0/16"', "overlaps the loopback range"),
    ('builtin_subnet = "169.254.0.0/16"', "overlaps the link-local range"),
    ('builtin_subnet = "nonsense"', "network.builtin_subnet: 'nonsense' is not an IPv4 subnet"),
    ('builtin_bridge = "a-name-far-too-long"', "network.builtin_bridge: 'a-name-far-too-long' is not a valid"),
    ('builtin_bridge = "br/0"', "network.builtin_bridge"),
    ('nft_table = "cri-shim"', "network.nft_table: 'cri-shim' is not a valid nftables table name"),
    ('cni_conf_dir = "etc/cni"', "network.cni_conf_dir: must be an absolute path"),
    ('cni_plugin_timeout = 0', "network.cni_plugin_timeout: must be > 0"),
])
def test_bad_network_config_is_refused_naming_the_key(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("/", "/")):
        load(tmp_path, line)


def test_default_network_config_is_valid_and_auto(tmp_path: Path) -> None:
    c = load(tmp_path, "")
    assert c.network.mode == "auto" and c.network.builtin_subnet == "10.88.0.0/16"


def pod_config(**kw: object) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="ns", uid="u"), **kw)  # type: ignore[arg-type]


def spec_of(cfg: pb.PodSandboxConfig) -> None:
    validate(pod_from_cri(SID, cfg))


@pytest.mark.parametrize("mapping, message", [
    (pb.PortMapping(protocol=7, container_port=80), r"port_mappings\[0\].protocol: unknown protocol 7"),  # type: ignore[arg-type]
    (pb.PortMapping(container_port=0), r"port_mappings\[0\].container_port: must be 1-65535, got 0"),
    (pb.PortMapping(container_port=80, host_port=70000), r"port_mappings\[0\].host_port: must be 0-65535"),
    (pb.PortMapping(container_port=80, host_port=-1), r"port_mappings\[0\].host_port"),
    (pb.PortMapping(container_port=80, host_port=8080, host_ip="localhost"),
     r"port_mappings\[0\].host_ip: 'localhost' is not an IP address"),
])
def test_bad_port_mappings_are_refused_naming_the_field(mapping: pb.PortMapping, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_of(pod_config(port_mappings=[mapping]))


def test_a_pod_cannot_publish_one_host_port_twice_but_tcp_and_udp_are_different_ports() -> None:
    twice = [pb.PortMapping(container_port=80, host_port=8080),
             pb.PortMapping(container_port=81, host_port=8080, host_ip="127.0.0.1")]
    with pytest.raises(InvalidArgument, match=r"port_mappings\[1\]: host port 8080/tcp is already published by "
                                              r"port_mappings\[0\]"):
        spec_of(pod_config(port_mappings=twice))
    spec_of(pod_config(port_mappings=[pb.PortMapping(container_port=53, host_port=53),
                                      pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=53)]))


def test_sctp_tcp_udp_are_the_accepted_protocols() -> None:
    spec = pod_from_cri(SID, pod_config(port_mappings=[pb.PortMapping(protocol=p, container_port=1, host_port=i + 1)
                                                       for i, p in enumerate((pb.TCP, pb.UDP, pb.SCTP))]))
    assert [m.protocol for m in spec.port_mappings] == [PortProtocol.TCP, PortProtocol.UDP, PortProtocol.SCTP]
    assert [m.host_port for m in spec.host_ports] == [1, 2, 3]


@pytest.mark.parametrize("dns, message", [
    (pb.DNSConfig(servers=["8.8.8.8", "dns.example"]), r"dns_config.servers\[1\]: 'dns.example' is not an IP"),
    (pb.DNSConfig(searches=["ok.example", "bad domain"]), r"dns_config.searches\[1\]"),
    (pb.DNSConfig(searches=[f"d{i}.example" for i in range(33)]), "33 domains; at most 32"),
    (pb.DNSConfig(options=["ndots:5", "rotate\nnameserver 6.6.6.6"]), r"dns_config.options\[1\]"),
])
def test_bad_dns_config_is_refused(dns: pb.DNSConfig, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_of(pod_config(dns_config=dns))


def test_metadata_that_would_inject_cni_args_is_refused() -> None:
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p;K8S_POD_NAME=other", namespace="ns", uid="u"))
    with pytest.raises(InvalidArgument, match="metadata.name: .* must not contain ';'"):
        spec_of(cfg)


def test_host_network_pods_are_recognised() -> None:
    cfg = pod_config(linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(network=pb.NODE))))
    assert pod_from_cri(SID, cfg).host_network


def test_bandwidth_annotations_are_quantities_within_kubelet_bounds() -> None:
    spec = pod_from_cri(SID, pod_config(annotations={"kubernetes.io/ingress-bandwidth": "10M",
                                                     "kubernetes.io/egress-bandwidth": "1Gi"}))
    assert (spec.bandwidth.ingress_rate, spec.bandwidth.egress_rate) == (10_000_000, 2**30)
    assert parse_quantity("500k") == 500_000
    with pytest.raises(InvalidArgument, match=r"annotations\[kubernetes.io/ingress-bandwidth\]: 'fast'"):
        pod_from_cri(SID, pod_config(annotations={"kubernetes.io/ingress-bandwidth": "fast"}))
    with pytest.raises(InvalidArgument, match="outside 1k..1P"):
        pod_from_cri(SID, pod_config(annotations={"kubernetes.io/egress-bandwidth": "10"}))


# ---------------------------------------------------------------- CNI results and plugin stdin


def test_pod_ips_from_a_1_0_result_keep_only_the_pod_interface_ipv4_first() -> None:
    result = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
              "ips": [{"address": "fd00::5/64", "interface": 2}, {"address": "10.1.0.5/24", "interface": 2},
                      {"address": "10.1.0.1/24", "interface": 0}]}
    assert pod_ips(result) == ("10.1.0.5", "fd00::5")


def test_pod_ips_from_0_4_and_0_2_results() -> None:
    v04 = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.2.0.7/16", "gateway": "10.2.0.1"}]}
    assert pod_ips(v04) == ("10.2.0.7",)
    v02 = {"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.9/24"}, "ip6": {"ip": "fd00::9/64"}}
    assert pod_ips(v02) == ("10.3.0.9", "fd00::9")
    assert pod_ips(None) == () and pod_ips({}) == ()


def test_plugin_stdin_gets_only_the_capabilities_it_declares_and_prev_result_by_version() -> None:
    conflist = {"cniVersion": "1.0.0", "name": "net", "plugins": []}
    plugin = {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}}
    caps = {"portMappings": [{"hostPort": 1}], "bandwidth": {"ingressRate": 1}, "dns": {}}
    prev = {"ips": []}
    conf = _netconf(conflist, plugin, prev, caps, "ADD")
    assert conf["name"] == "net" and conf["cniVersion"] == "1.0.0" and conf["type"] == "portmap"
    assert conf["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert conf["prevResult"] == prev
    assert "runtimeConfig" not in _netconf(conflist, {"type": "bridge"}, None, caps, "ADD")
    old = dict(conflist, cniVersion="0.3.1")
    assert "prevResult" in _netconf(old, plugin, prev, caps, "ADD")       # chaining exists since 0.3.0
    assert "prevResult" not in _netconf(old, plugin, prev, caps, "DEL")   # DEL gets it since 0.4.0
    assert "prevResult" not in _netconf(dict(conflist, cniVersion="0.2.0"), plugin, prev, caps, "ADD")


def test_version_tuple() -> None:
    assert version_tuple("1.0.0") > version_tuple("0.4.0") > version_tuple("0.3.1") > version_tuple("")
    assert version_tuple("0.4.0-rc1") == (0, 4, 0)


# ---------------------------------------------------------------- allocations


@pytest.fixture
def alloc(tmp_path: Path) -> Iterator[Allocations]:
    store = MetadataStore.open(tmp_path / "meta.db")
    yield Allocations(store)
    store.close()


def test_ips_round_robin_never_twice_and_exhaustion_is_a_clear_error(alloc: Allocations) -> None:
    net = ipaddress.IPv4Network("10.9.0.0/29")      # .1 gateway, .2-.6 pods, .7 broadcast
    ips = [alloc.reserve(f"{i:064x}", "ns/p", (), net) for i in range(5)]
    assert ips == [f"10.9.0.{i}" for i in range(2, 7)]
    assert alloc.reserve(f"{0:064x}", "ns/p", (), net) == "10.9.0.2"   # idempotent per sandbox
    with pytest.raises(ResourceExhausted, match="10.9.0.0/29 has no free address left"):
        alloc.reserve("f" * 64, "ns/p", (), net)
    alloc.release(f"{2:064x}")                       # frees 10.9.0.4
    assert alloc.reserve("e" * 64, "ns/p", (), net) == "10.9.0.4"
    assert alloc.ip_of("e" * 64) == "10.9.0.4"


def test_a_released_ip_is_reused_last(alloc: Allocations) -> None:
    net = ipaddress.IPv4Network("10.9.0.0/24")
    first = alloc.reserve("1" * 64, "ns/a", (), net)
    alloc.release("1" * 64)
    assert alloc.reserve("2" * 64, "ns/b", (), net) != first


def test_host_port_conflicts_wildcard_against_specific_but_not_across_protocols(alloc: Allocations) -> None:
    tcp = PortMapping(PortProtocol.TCP, 80, 8080)
    alloc.reserve("1" * 64, "ns/owner", (tcp,), None)
    for other in (PortMapping(PortProtocol.TCP, 80, 8080), PortMapping(PortProtocol.TCP, 80, 8080, "127.0.0.1"),
                  PortMapping(PortProtocol.TCP, 80, 8080, "0.0.0.0")):
        with pytest.raises(AlreadyExists, match="host port 8080/tcp .* already published by pod ns/owner"):
            alloc.reserve("2" * 64, "ns/intruder", (other,), ipaddress.IPv4Network("10.9.0.0/24"))
    assert alloc.ip_of("2" * 64) is None            # the failed reservation took no IP either
    alloc.reserve("3" * 64, "ns/udp", (PortMapping(PortProtocol.UDP, 53, 8080),), None)
    specific = PortMapping(PortProtocol.TCP, 80, 9090, "127.0.0.1")
    alloc.reserve("4" * 64, "ns/lo", (specific,), None)
    alloc.reserve("5" * 64, "ns/other-ip", (PortMapping(PortProtocol.TCP, 80, 9090, "192.0.2.2"),), None)
    with pytest.raises(AlreadyExists):
        alloc.reserve("6" * 64, "ns/any", (PortMapping(PortProtocol.TCP, 80, 9090),), None)
    alloc.release("1" * 64)
    alloc.reserve("2" * 64, "ns/intruder", (tcp,), None)   # free once the owner is gone
    assert [p.host_port for p in alloc.host_ports_of("2" * 64)] == [8080]
    assert alloc.sandboxes() == {"2" * 64, "3" * 64, "4" * 64, "5" * 64}


# ---------------------------------------------------------------- conf dir watcher


def test_conf_watcher_reloads_when_the_directory_changes(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bridge").write_text("#!/bin/sh\n")
    w = ConfWatcher(conf_dir, [str(bin_dir)])
    assert not w.current().ready and f"directory {conf_dir} does not exist" in w.current().message
    conf_dir.mkdir()
    assert "no network config found" in w.current().message
    good = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}
    (conf_dir / "10-n.conflist").write_text(json.dumps(good))
    assert w.current().ready and w.current().config is not None
    (conf_dir / "10-n.conflist").write_text(json.dumps(dict(good, plugins=[{"type": "flannel"}])) + " ")
    status = w.current()
    assert not status.ready and "plugin 'flannel' not found" in status.message and "10-n.conflist" in status.message
    (bin_dir / "flannel").write_text("#!/bin/sh\n")     # installing the plugin makes it usable
    assert w.current().ready
