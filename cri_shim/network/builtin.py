"""The built-in default network: one bridge, a veth pair per pod, NAT and hostPorts in nftables.

Layout on the host (all names configurable, see `[network]` in the config):
- bridge `crishim0` holding the subnet's first address (the pods' gateway);
- per pod a veth pair: `vcs<12 hex of the sandbox id>` on the bridge, its peer
  `eth0` created directly inside the pod's netns (no rename, no move);
- nftables table `ip cri_shim`: two maps of published hostPorts (one for
  "every host address", one per host IP) used by a DNAT chain hooked in
  prerouting (traffic from other hosts) and output (the host itself, including
  127.0.0.1, which works because the bridge has `route_localnet` and such
  traffic is masqueraded), plus masquerade for pod egress.

The database (`Allocations`) is the truth for IPs and hostPorts: the maps are
rebuilt from it when the network is first prepared by a daemon, so a crash
between two steps never leaves a stale DNAT behind for long.

Host-side netlink calls run on worker threads (pyroute2 sockets are made and
used on the same thread); pod-side ones on a thread that entered the pod's
netns (`runtime.linux.netns.run_in_netns_async`). pyroute2's forking netns
helpers are never used.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cri_shim.errors import FailedPrecondition, Internal, InvalidArgument
from cri_shim.network.allocations import Allocations, HostPort
from cri_shim.network.nft import Nft, NftError, missing, quote
from cri_shim.network.types import PodNetworkSpec, normalize_host_ip
from runtime.linux import netns

log = logging.getLogger(__name__)

T = TypeVar("T")

POD_IFNAME = "eth0"
POD_IFINDEX = 2
EOPNOTSUPP = 95
EINVAL = 22
VETH_PREFIX = "vcs"
ENODEV = 19
EEXIST = 17
PROC_SYS = Path("/proc/sys/net/ipv4")
MAP_ANY = "hostports_any"
MAP_IP = "hostports_ip"


@dataclass(frozen=True)
class BuiltinSettings:
    subnet: ipaddress.IPv4Network
    bridge: str
    nft_table: str
    masquerade: bool = True

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def bridge_mac(self) -> str:
        # A fixed MAC: otherwise the bridge takes the lowest port MAC and changes it as pods come and go,
        # which leaves every pod with a stale ARP entry for its gateway.
        digest = hashlib.sha256(self.bridge.encode()).digest()
        return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def veth_name(sandbox_id: str) -> str:
    return VETH_PREFIX + sandbox_id[:12]


class BridgeMissing(Exception):
    """The bridge vanished since the network was prepared (someone deleted it)."""


class HostNetlink:
    """One pyroute2 socket in the host netns, kept open and used only on its own worker thread.

    Reusing the socket saves opening one per pod (pyroute2 sockets must stay on the thread that made
    them); the worker thread never enters a pod's namespace.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink-host")
        self._ipr: IPRoute | None = None

    async def call(self, fn: Callable[[IPRoute], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    def _run(self, fn: Callable[[IPRoute], T]) -> T:
        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            return fn(self._ipr)
        except OSError:
            self._reset()  # a broken socket: the next call opens a fresh one
            raise

    def _reset(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def close(self) -> None:
        self._executor.submit(self._reset).result()
        self._executor.shutdown(wait=True)


class BuiltinNetwork:
    def __init__(self, settings: BuiltinSettings, allocations: Allocations, nft: Nft) -> None:
        self.settings = settings
        self._alloc = allocations
        self._nft = nft
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._host = HostNetlink()
        self._bridge_index: int | None = None

    # ------------------------------------------------------------ network-wide

    async def ensure_ready(self) -> None:
        """Create the bridge, sysctls and nftables table if needed. Safe to call again."""
        async with self._ready_lock:
            if self._ready:
                return
            await asyncio.to_thread(self._prepare)
            self._ready = True
            log.info("built-in network ready: bridge %s, subnet %s, nftables table ip %s",
                     self.settings.bridge, self.settings.subnet, self.settings.nft_table)

    def _prepare(self) -> None:
        s = self.settings
        with IPRoute() as ipr:
            _check_subnet_free(ipr, s)
            _ensure_bridge(ipr, s)
        _write_sysctl(PROC_SYS / "ip_forward", "1")  # pods' egress and hostPorts from other hosts are forwarded
        _write_sysctl(PROC_SYS / "conf" / s.bridge / "route_localnet", "1")  # 127.0.0.1:hostPort DNAT
        try:
            self._nft.run(self._table_commands())
        except NftError as e:
            raise Internal(f"cannot install the nftables table ip {s.nft_table}: {e}") from None

    def _table_commands(self) -> str:
        s, t = self.settings, f"ip {self.settings.nft_table}"
        br = quote(s.bridge)
        lines = [
            f"add table {t}",
            f"add map {t} {MAP_ANY} {{ type inet_proto . inet_service : ipv4_addr . inet_service ; }}",
            f"add map {t} {MAP_IP} {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; }}",
            f"flush map {t} {MAP_ANY}",
            f"flush map {t} {MAP_IP}",
            f"add chain {t} hostports",
            f"flush chain {t} hostports",
            f"add rule {t} hostports dnat ip to ip daddr . meta l4proto . th dport map @{MAP_IP}",
            f"add rule {t} hostports fib daddr type local dnat ip to meta l4proto . th dport map @{MAP_ANY}",
            f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}",
            f"flush chain {t} prerouting",
            f"add rule {t} prerouting jump hostports",
            f"add chain {t} output {{ type nat hook output priority -100 ; policy accept ; }}",
            f"flush chain {t} output",
            f"add rule {t} output jump hostports",
            f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}",
            f"flush chain {t} postrouting",
            # The host reaching a hostPort at 127.0.0.1: the pod must answer to an address it can route.
            f"add rule {t} postrouting ip saddr 127.0.0.0/8 oifname {br} masquerade",
            # A pod reaching a hostPort (its own or another pod's) through the host: hairpin.
            f"add rule {t} postrouting ct status dnat ip saddr {s.subnet} oifname {br} masquerade",
        ]
        if s.masquerade:
            lines.append(f"add rule {t} postrouting ip saddr {s.subnet} oifname != {br} masquerade")
        # Rebuild the hostPort maps from the database (the truth) in the same atomic batch.
        for port, ip in self._published_ports():
            lines.append(_element_command("add", t, port, ip))
        return "\n".join(lines) + "\n"

    def _published_ports(self) -> list[tuple[HostPort, str]]:
        out: list[tuple[HostPort, str]] = []
        for sandbox_id in sorted(self._alloc.sandboxes()):
            ip = self._alloc.ip_of(sandbox_id)
            if ip is not None and ipaddress.IPv4Address(ip) in self.settings.subnet:
                out.extend((port, ip) for port in self._alloc.host_ports_of(sandbox_id))
        return out

    async def remove(self) -> None:
        """Delete the bridge and the nftables table (nothing may still use them). For tests and uninstall."""
        def work() -> None:
            try:
                self._nft.run(f"delete table ip {self.settings.nft_table}\n")
            except NftError as e:
                if not missing(e):
                    raise Internal(f"cannot delete nftables table ip {self.settings.nft_table}: {e}") from None
            with IPRoute() as ipr:
                _delete_link(ipr, self.settings.bridge)
        async with self._ready_lock:
            await asyncio.to_thread(work)
            self._ready = False

    # ------------------------------------------------------------ per pod

    async def setup(self, spec: PodNetworkSpec, netns_path: Path) -> tuple[str, ...]:
        """Give the pod in `netns_path` an IP on the bridge and publish its hostPorts; all or nothing."""
        for i, m in enumerate(spec.port_mappings):
            host_ip = normalize_host_ip(m.host_ip)
            if m.host_port and host_ip and not isinstance(ipaddress.ip_address(host_ip), ipaddress.IPv4Address):
                raise InvalidArgument(f"port_mappings[{i}].host_ip: {m.host_ip} is IPv6; the built-in network is "
                                      "IPv4 only (use a CNI network for IPv6 hostPorts)")
        await self.ensure_ready()
        s = self.settings
        pod = f"{spec.namespace}/{spec.name}"
        ip = await asyncio.to_thread(self._alloc.reserve, spec.sandbox_id, pod, spec.host_ports, s.subnet)
        assert ip is not None
        try:
            await self._plumb(spec.sandbox_id, netns_path, ip)
            if spec.host_ports:
                await asyncio.to_thread(self._publish, self._alloc.host_ports_of(spec.sandbox_id), ip)
        except BaseException:
            await asyncio.shield(self._undo_setup(spec.sandbox_id))
            raise
        return (ip,)

    async def _plumb(self, sandbox_id: str, netns_path: Path, ip: str) -> None:
        try:
            index = await self._host.call(lambda ipr: self._add_veth(ipr, sandbox_id, netns_path))
        except BridgeMissing:
            log.warning("bridge %s disappeared; recreating it", self.settings.bridge)
            self._ready = False
            await self.ensure_ready()
            index = await self._host.call(lambda ipr: self._add_veth(ipr, sandbox_id, netns_path))
        await netns.run_in_netns_async(netns_path, lambda: _configure_pod_side(self.settings, ip, index))

    def _bridge(self, ipr: IPRoute, refresh: bool = False) -> int:
        if self._bridge_index is None or refresh:
            found = ipr.link_lookup(ifname=self.settings.bridge)
            if not found:
                raise BridgeMissing(self.settings.bridge)
            self._bridge_index = int(found[0])
        return self._bridge_index

    def _add_veth(self, ipr: IPRoute, sandbox_id: str, netns_path: Path) -> int | None:
        """Create the pair with eth0 straight in the pod's netns; returns eth0's ifindex there if known."""
        name = veth_name(sandbox_id)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            index = self._add_veth_retrying(ipr, name, fd)
        except NetlinkError as e:
            raise Internal(f"cannot create the veth pair {name}/{POD_IFNAME} for the pod: {e}") from None
        finally:
            os.close(fd)
        # Hairpin: a pod reaching its own hostPort through the host gets the packet back on its own port.
        _write_sysctl(Path("/sys/class/net") / name / "brport" / "hairpin_mode", "1")
        return index

    def _add_veth_retrying(self, ipr: IPRoute, name: str, fd: int) -> int | None:
        for attempt in range(3):
            try:
                # eth0 asks for ifindex 2 (a fresh netns has only lo): the pod side then usually needs no lookup.
                _add_veth_pair(ipr, name, fd, self._bridge(ipr, refresh=attempt > 0), POD_IFINDEX)
                return POD_IFINDEX
            except NetlinkError as e:
                if e.code == EEXIST and ipr.link_lookup(ifname=name):
                    _delete_link(ipr, name)  # left by an earlier attempt for this sandbox: start over
                elif e.code not in (ENODEV, EEXIST, EOPNOTSUPP, EINVAL):
                    raise
                # EINVAL/ENODEV/EOPNOTSUPP: the cached bridge index is stale (the bridge was deleted or
                # recreated); EEXIST: ifindex 2 is taken in the pod's netns.
        _add_veth_pair(ipr, name, fd, self._bridge(ipr, refresh=True), None)
        return None

    def _publish(self, ports: list[HostPort], ip: str) -> None:
        t = f"ip {self.settings.nft_table}"
        try:
            self._nft.run("\n".join(_element_command("add", t, p, ip) for p in ports) + "\n")
        except NftError as e:
            raise Internal(f"cannot publish the pod's hostPorts in nftables table {t}: {e}") from None

    async def _undo_setup(self, sandbox_id: str) -> None:
        try:
            await self.teardown(sandbox_id)
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            log.exception("undoing the built-in network setup of %s failed", sandbox_id)

    async def teardown(self, sandbox_id: str) -> None:
        """Unpublish hostPorts, delete the veth, release the IP. Idempotent."""
        ports = await asyncio.to_thread(self._alloc.host_ports_of, sandbox_id)
        await asyncio.to_thread(self._unpublish, ports)
        await self._host.call(lambda ipr: self._delete_veth(ipr, sandbox_id))
        # Release last: the IP must not go to another pod while this pod's veth still carries it.
        await asyncio.to_thread(self._alloc.release, sandbox_id)

    def _unpublish(self, ports: list[HostPort]) -> None:
        t = f"ip {self.settings.nft_table}"
        for port in ports:
            try:
                self._nft.run(_element_command("delete", t, port, "") + "\n")
            except NftError as e:
                if not missing(e):
                    raise Internal(f"cannot remove hostPort {port.describe()} from nftables table {t}: {e}") from None

    def _delete_veth(self, ipr: IPRoute, sandbox_id: str) -> None:
        try:
            _delete_link(ipr, veth_name(sandbox_id))
        except NetlinkError as e:
            raise Internal(f"cannot delete the pod's veth {veth_name(sandbox_id)}: {e}") from None

    def close(self) -> None:
        """Close the host netlink socket and its worker thread."""
        self._host.close()

    async def check(self, sandbox_id: str, netns_path: Path) -> None:
        """Raise FailedPrecondition if the pod's interface, address or hostPorts are not in place."""
        ip = await asyncio.to_thread(self._alloc.ip_of, sandbox_id)
        if ip is None:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} has no address on the built-in network")
        name = veth_name(sandbox_id)

        def host_side() -> int | None:
            with IPRoute() as ipr:
                links = ipr.get_links(ifname=name) if ipr.link_lookup(ifname=name) else []
                bridge = ipr.link_lookup(ifname=self.settings.bridge)
            if not links or not bridge:
                return None
            master = links[0].get("master")
            return int(master) if master == bridge[0] else -1

        master = await asyncio.to_thread(host_side)
        if master is None or master < 0:
            raise FailedPrecondition(f"pod veth {name} is missing or not on bridge {self.settings.bridge}")
        addrs = await netns.run_in_netns_async(netns_path, _pod_addresses)
        if ip not in addrs:
            raise FailedPrecondition(f"{POD_IFNAME} in {netns_path} does not hold the pod address {ip} "
                                     f"(has {', '.join(addrs) or 'none'})")


# ---------------------------------------------------------------- netlink and sysfs helpers


def _ensure_bridge(ipr: IPRoute, s: BuiltinSettings) -> None:
    found = ipr.link_lookup(ifname=s.bridge)
    if not found:
        try:
            ipr.link("add", ifname=s.bridge, kind="bridge", address=s.bridge_mac)
        except NetlinkError as e:
            if e.code != EEXIST:  # another daemon made it at the same instant: fine
                raise Internal(f"cannot create bridge {s.bridge}: {e}") from None
        found = ipr.link_lookup(ifname=s.bridge)
    index = int(found[0])
    link = ipr.get_links(index)[0]
    kind = link.get(("linkinfo", "kind"))
    if kind not in (None, "bridge"):
        raise FailedPrecondition(f"network.builtin_bridge: interface {s.bridge} exists and is a {kind}, not a "
                                 "bridge; choose another name")
    have = {(a.get("address"), a.get("prefixlen")) for a in ipr.get_addr(index=index, family=2)}
    if (str(s.gateway), s.subnet.prefixlen) not in have:
        try:
            ipr.addr("add", index=index, address=str(s.gateway), prefixlen=s.subnet.prefixlen)
        except NetlinkError as e:
            if e.code != EEXIST:
                raise Internal(f"cannot give bridge {s.bridge} the address {s.gateway}/{s.subnet.prefixlen}: "
                               f"{e}") from None
    ipr.link("set", index=index, state="up")


def _check_subnet_free(ipr: IPRoute, s: BuiltinSettings) -> None:
    """Refuse a subnet that overlaps a network the host already routes through another interface."""
    names = {int(link["index"]): str(link.get("ifname")) for link in ipr.get_links()}
    for route in ipr.get_routes(family=2, table=254):
        length = int(route["dst_len"])
        oif = int(route.get("oif") or 0)
        if length == 0 or names.get(oif) == s.bridge:
            continue
        net = ipaddress.ip_network(f"{route.get('dst')}/{length}", strict=False)
        if net.overlaps(s.subnet):
            raise FailedPrecondition(
                f"network.builtin_subnet {s.subnet} overlaps the host's route to {net} via "
                f"{names.get(oif, 'another interface')}; choose a free subnet for the built-in network")


def _add_veth_pair(ipr: IPRoute, name: str, netns_fd: int, bridge_index: int, peer_index: int | None) -> None:
    peer: dict[str, object] = {"ifname": POD_IFNAME, "net_ns_fd": netns_fd}
    if peer_index is not None:
        peer["index"] = peer_index
    ipr.link("add", ifname=name, kind="veth", peer=peer, master=bridge_index, state="up")


def _delete_link(ipr: IPRoute, name: str) -> None:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as e:
        if e.code != ENODEV:
            raise


def _configure_pod_side(s: BuiltinSettings, ip: str, index: int | None) -> None:
    """Runs inside the pod's netns: address eth0, bring it up, default route via the bridge."""
    with IPRoute() as ipr:
        try:
            if index is None:
                raise NetlinkError(ENODEV)
            ipr.addr("add", index=index, address=ip, prefixlen=s.subnet.prefixlen)
        except NetlinkError as e:
            # The kernel may hand out another ifindex than asked (e.g. right after a failed attempt).
            if e.code != ENODEV:
                raise
            index = ipr.link_lookup(ifname=POD_IFNAME)[0]
            ipr.addr("add", index=index, address=ip, prefixlen=s.subnet.prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(s.gateway), oif=index)


def _pod_addresses() -> list[str]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=POD_IFNAME)
        if not found:
            return []
        return [str(a.get("address")) for a in ipr.get_addr(index=found[0], family=2)]


def _write_sysctl(path: Path, value: str) -> None:
    try:
        if path.read_text().strip() == value:
            return
        path.write_text(value)
    except OSError as e:
        raise Internal(f"cannot set {path} to {value}: {e.strerror}") from None


def _element_command(verb: str, table: str, port: HostPort, ip: str) -> str:
    proto = port.protocol.value
    if port.host_ip:
        key, name = f"{port.host_ip} . {proto} . {port.host_port}", MAP_IP
    else:
        key, name = f"{proto} . {port.host_port}", MAP_ANY
    value = f" : {ip} . {port.container_port}" if verb == "add" else ""
    return f"{verb} element {table} {name} {{ {key}{value} }}"
