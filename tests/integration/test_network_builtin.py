"""The built-in network on the real kernel: bridge, veths, NAT and hostPorts, with real traffic."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from cri_shim.network.builtin import veth_name
from cri_shim.network.types import PortMapping, PortProtocol
from runtime.linux import netns
from tests.harness.daemon import make_workdir
from tests.integration.network_env import (
    BRIDGE, OUTSIDE_HOST_IP, SUBNET, TABLE, Env, delete_link, host_address, http_get, http_get_in, httpd,
    link_exists, network_config, nft_elements, outside_host, remove_workdir, udp_ask, udp_echo,
)

TCP, UDP = PortProtocol.TCP, PortProtocol.UDP


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    workdir = make_workdir("net")
    e = Env(workdir, network_config(workdir))
    yield e
    e.close()
    assert not link_exists(BRIDGE)
    assert subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True).returncode != 0
    remove_workdir(workdir)


def assert_pod_gone(env: Env, sandbox_id: str, ip: str) -> None:
    assert not link_exists(veth_name(sandbox_id)), "the pod's veth is still there"
    assert not env.netns_path(sandbox_id).exists(), "the netns pin is still there"
    assert env.store.query("SELECT * FROM network_ips WHERE sandbox_id = ?", (sandbox_id,)) == []
    assert env.store.query("SELECT * FROM network_hostports WHERE sandbox_id = ?", (sandbox_id,)) == []
    assert all(ip not in str(e) for e in nft_elements()), nft_elements()


def test_two_pods_reach_each_other_and_the_host_reaches_both(env: Env) -> None:
    a, b = env.spec("web-a"), env.spec("web-b")
    sa, sb = env.setup(a), env.setup(b)
    assert sa.network == "builtin" and sa.ip != sb.ip
    assert ipaddress.ip_address(sa.ip) in ipaddress.ip_network(SUBNET)
    with httpd(sa.netns_path, env.workdir / "www-a", "pod a"), httpd(sb.netns_path, env.workdir / "www-b", "pod b"):
        assert http_get(sa.ip, 80) == "pod a"            # host -> pod
        assert http_get(sb.ip, 80) == "pod b"
        assert http_get_in(sa.netns_path, sb.ip, 80) == "pod b"   # pod -> pod, real processes on both ends
        assert http_get_in(sb.netns_path, sa.ip, 80) == "pod a"
    env.teardown(a.sandbox_id)
    env.teardown(b.sandbox_id)
    assert_pod_gone(env, a.sandbox_id, sa.ip)
    assert_pod_gone(env, b.sandbox_id, sb.ip)


def test_pod_interface_address_and_default_route(env: Env) -> None:
    spec = env.spec("routes")
    st = env.setup(spec)
    addrs = subprocess.run(["nsenter", f"--net={st.netns_path}", "ip", "-4", "-o", "addr"], capture_output=True,
                           text=True, check=True).stdout
    assert any(line.split()[1] == "eth0" and f"inet {st.ip}/16" in line for line in addrs.splitlines()), addrs
    assert any(line.split()[1] == "lo" and "inet 127.0.0.1/8" in line for line in addrs.splitlines()), addrs
    routes = subprocess.run(["nsenter", f"--net={st.netns_path}", "ip", "route"], capture_output=True, text=True,
                            check=True).stdout
    assert "default via 10.213.0.1 dev eth0" in routes
    # The pod reaches its gateway (the bridge) with a real ping.
    ping = subprocess.run(["nsenter", f"--net={st.netns_path}", "busybox", "ping", "-c", "1", "-W", "3",
                           "10.213.0.1"], capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    env.run(env.manager.check(spec.sandbox_id, st.netns_path))
    env.teardown(spec.sandbox_id)


def test_hostport_reachable_on_loopback_host_address_and_from_another_host(env: Env) -> None:
    spec = env.spec("hostport", ports=(PortMapping(TCP, 80, 18080), PortMapping(UDP, 5353, 18053)))
    st = env.setup(spec)
    with httpd(st.netns_path, env.workdir / "www-hp", "published"), udp_echo(st.netns_path, 5353):
        assert http_get("127.0.0.1", 18080) == "published"
        assert http_get(host_address(), 18080) == "published"
        with outside_host(env.workdir) as other:
            assert http_get_in(other, OUTSIDE_HOST_IP, 18080) == "published"
        assert udp_ask("127.0.0.1", 18053, b"hi") == b"echo:hi"
    env.teardown(spec.sandbox_id)
    assert_pod_gone(env, spec.sandbox_id, st.ip)
    with pytest.raises(OSError):
        http_get("127.0.0.1", 18080, timeout=2)


def test_hostport_with_host_ip_listens_only_on_that_address(env: Env) -> None:
    spec = env.spec("hostip", ports=(PortMapping(TCP, 80, 18081, host_ip="127.0.0.1"),))
    st = env.setup(spec)
    with httpd(st.netns_path, env.workdir / "www-ip", "loopback only"):
        assert http_get("127.0.0.1", 18081) == "loopback only"
        with pytest.raises(OSError):   # nothing is published on the host's other addresses
            http_get(host_address(), 18081, timeout=2)
    env.teardown(spec.sandbox_id)


def test_hostport_taken_by_another_pod_is_refused_and_nothing_is_left(env: Env) -> None:
    first = env.spec("owner", ports=(PortMapping(TCP, 80, 18090),))
    env.setup(first)
    links_before = set(Path("/sys/class/net").iterdir())
    for mapping in (PortMapping(TCP, 8080, 18090), PortMapping(TCP, 8080, 18090, host_ip="127.0.0.1")):
        second = env.spec("intruder", ports=(mapping,))
        with pytest.raises(AlreadyExists, match=r"port_mappings\[0\]: host port 18090/tcp .* cstnet/owner"):
            env.setup(second)
        assert not env.netns_path(second.sandbox_id).exists()
        assert env.store.query("SELECT * FROM network_ips WHERE sandbox_id = ?", (second.sandbox_id,)) == []
        assert set(Path("/sys/class/net").iterdir()) == links_before
    # The same port over UDP is another port: allowed.
    other = env.spec("udp-neighbour", ports=(PortMapping(UDP, 53, 18090),))
    env.setup(other)
    env.teardown(other.sandbox_id)
    env.teardown(first.sandbox_id)


def test_ipv6_host_ip_is_refused_by_the_ipv4_builtin_network(env: Env) -> None:
    spec = env.spec("v6", ports=(PortMapping(TCP, 80, 18091, host_ip="::1"),))
    with pytest.raises(InvalidArgument, match=r"port_mappings\[0\].host_ip: ::1 is IPv6"):
        env.setup(spec)
    assert not env.netns_path(spec.sandbox_id).exists()


def test_teardown_is_idempotent_and_tolerates_a_vanished_netns(env: Env) -> None:
    spec = env.spec("vanish", ports=(PortMapping(TCP, 80, 18092),))
    st = env.setup(spec)
    netns.remove(st.netns_path)             # e.g. removed by hand or by a crash half-way
    env.teardown(spec.sandbox_id)
    env.teardown(spec.sandbox_id)
    env.teardown("f" * 64)                  # never set up at all
    assert_pod_gone(env, spec.sandbox_id, st.ip)


def test_ips_are_never_handed_out_twice_and_survive_a_restart(env: Env) -> None:
    specs = [env.spec(f"many-{i}") for i in range(6)]
    ips = [env.setup(s).ip for s in specs]
    assert len(set(ips)) == len(ips)
    published = env.spec("survivor", ports=(PortMapping(TCP, 80, 18093),))
    st = env.setup(published)
    # A "restarted daemon" whose nftables maps were lost (e.g. a firewall reload): a new manager on the
    # same store rebuilds them from the store.
    subprocess.run(["nft", "flush", "map", "ip", TABLE, "hostports_any"], check=True)
    env.manager.close()
    env.manager = env.new_manager()
    later = env.spec("after-restart")
    later_ip = env.setup(later).ip
    assert later_ip not in ips + [st.ip]
    with httpd(st.netns_path, env.workdir / "www-s", "still published"):
        assert http_get("127.0.0.1", 18093) == "still published"
    # Released addresses come back only after the rest of the subnet (round-robin, like host-local).
    env.teardown(specs[0].sandbox_id)
    again = env.spec("reuse")
    assert env.setup(again).ip != ips[0]
    for s in specs[1:] + [published, later, again]:
        env.teardown(s.sandbox_id)
    assert env.store.query("SELECT * FROM network_ips") == []


def test_host_network_pod_gets_no_address() -> None:
    workdir = make_workdir("nethost")
    e = Env(workdir, network_config(workdir, builtin_bridge="cstnethost0", nft_table="cstnethost"))
    try:
        st = e.run(e.manager.setup_pod(e.spec("hostnet", host_network=True), workdir / "unused"))
        assert st.ips == () and st.network == "host"
        assert e.store.query("SELECT * FROM network_ips") == []
    finally:
        e.close()
        remove_workdir(workdir)


def test_a_deleted_bridge_is_recreated_by_the_next_pod(env: Env) -> None:
    first = env.spec("before")
    env.setup(first)
    env.teardown(first.sandbox_id)
    delete_link(BRIDGE)                      # an operator (or another tool) removed it
    second, third = env.spec("after"), env.spec("after-2")
    a, b = env.setup(second), env.setup(third)
    assert link_exists(BRIDGE)
    with httpd(b.netns_path, env.workdir / "www-re", "recreated"):
        assert http_get_in(a.netns_path, b.ip, 80) == "recreated"
    env.teardown(second.sandbox_id)
    env.teardown(third.sandbox_id)


def test_gc_releases_networks_of_unknown_sandboxes(env: Env) -> None:
    keep, lost = env.spec("keep"), env.spec("lost")
    st_keep, st_lost = env.setup(keep), env.setup(lost)
    released = env.run(env.manager.gc({keep.sandbox_id}))
    assert released == [lost.sandbox_id]
    netns.remove(st_lost.netns_path)   # the pin is the lifecycle's leftover to remove (restart.py does)
    assert_pod_gone(env, lost.sandbox_id, st_lost.ip)
    assert link_exists(veth_name(keep.sandbox_id))
    env.teardown(keep.sandbox_id)
    assert st_keep.ip


def test_a_subnet_overlapping_a_host_network_is_refused_before_anything_is_made() -> None:
    workdir = make_workdir("netov")
    subprocess.run(["ip", "link", "add", "cstnetdum0", "type", "veth", "peer", "name", "cstnetdum1"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.231.1.1/24", "dev", "cstnetdum0"], check=True)
        subprocess.run(["ip", "link", "set", "cstnetdum0", "up"], check=True)
        e = Env(workdir, network_config(workdir, builtin_subnet="10.231.0.0/16", builtin_bridge="cstnetov0",
                                        nft_table="cstnetov"))
        spec = e.spec("overlap")
        with pytest.raises(FailedPrecondition, match=r"10.231.0.0/16 overlaps the host's route to "
                                                     r"10.231.1.0/24 via cstnetdum0"):
            e.setup(spec)
        assert not link_exists("cstnetov0")
        assert not e.netns_path(spec.sandbox_id).exists()
        assert e.store.query("SELECT * FROM network_ips") == []
        e.close()
    finally:
        delete_link("cstnetdum0")
        delete_link("cstnetov0")
        remove_workdir(workdir)
