"""Helpers for the pod networking tests: a NetworkManager on private names, pods, servers, clients.

Every global name here contains "cstnet" and every subnet is 10.213.x or 10.231-10.233.x,
so suites of other branches running at the same time on this machine never
see our bridges, tables or addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from pyroute2 import IPRoute

from cri_shim.config import Config, NetworkConfig, ServerConfig
from cri_shim.network.manager import PodNetworkManager
from cri_shim.network.types import DnsConfig, PodNetworkSpec, PortMapping
from cri_shim.store.db import MetadataStore
from runtime.linux import netns

T = TypeVar("T")

SUBNET = "10.213.0.0/16"
BRIDGE = "cstnet0"
TABLE = "cstnet"
CNI_SUBNET = "10.232.0.0/16"
CNI_BRIDGE = "cstnetcni0"
CNI_NETWORK = "cstnet-cni"
OUTSIDE_HOST_IP = "10.233.0.1"   # the host's end of the link to a simulated second host
OUTSIDE_PEER_IP = "10.233.0.2"
OUTSIDE_LINK = "cstnetx0"
DEBIAN_CNI = "/usr/lib/cni"


def network_config(workdir: Path, **overrides: Any) -> Config:
    net = NetworkConfig(cni_conf_dir=str(workdir / "net.d"), cni_bin_dirs=[str(workdir / "bin"), DEBIAN_CNI],
                        mode="builtin", builtin_subnet=SUBNET, builtin_bridge=BRIDGE, nft_table=TABLE,
                        cni_plugin_timeout=20.0)
    return Config(server=ServerConfig(root=str(workdir / "root"), state=str(workdir / "state")),
                  network=replace(net, **overrides))


def bridge_conflist(workdir: Path, extra_plugins: list[dict[str, Any]] | None = None) -> str:
    plugins: list[dict[str, Any]] = [
        {"type": "bridge", "bridge": CNI_BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": CNI_SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": str(workdir / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    plugins.extend(extra_plugins or [])
    return json.dumps({"cniVersion": "1.0.0", "name": CNI_NETWORK, "plugins": plugins}, indent=1)


@dataclass(frozen=True)
class Pod:
    spec: PodNetworkSpec
    netns_path: Path
    ips: tuple[str, ...]
    network: str

    @property
    def ip(self) -> str:
        return self.ips[0]


@dataclass
class Env:
    """One event loop, one store and one PodNetworkManager for a test module (or a test).

    `setup` does what RunPodSandbox does around the manager: pin a netns, then attach it.
    """

    workdir: Path
    config: Config
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    store: MetadataStore = field(init=False)
    manager: PodNetworkManager = field(init=False)
    pods: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for sub in ("net.d", "bin", "root", "state/netns"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.store = MetadataStore.open(self.workdir / "meta.db")
        self.manager = self.new_manager()

    def new_manager(self, **overrides: Any) -> PodNetworkManager:
        config = replace(self.config, network=replace(self.config.network, **overrides)) if overrides else self.config
        self.registry = CollectorRegistry(auto_describe=True)
        return PodNetworkManager(config, self.store, self.registry)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def netns_path(self, sandbox_id: str) -> Path:
        return self.workdir / "state" / "netns" / sandbox_id

    def spec(self, name: str, ports: tuple[PortMapping, ...] = (), dns: DnsConfig | None = None,
             **extra: Any) -> PodNetworkSpec:
        return PodNetworkSpec(sandbox_id=secrets.token_hex(32), name=name, namespace="cstnet",
                              uid=secrets.token_hex(8), hostname=name, port_mappings=ports, dns=dns or DnsConfig(),
                              **extra)

    def setup(self, spec: PodNetworkSpec) -> Pod:
        """Pin a netns and attach it; on failure the netns is removed again (as RunPodSandbox's undo does)."""
        path = self.netns_path(spec.sandbox_id)
        self.pods.append(spec.sandbox_id)
        netns.create(path)
        try:
            st = self.run(self.manager.setup_pod(spec, path))
        except BaseException:
            netns.remove(path)
            raise
        return Pod(spec, path, st.ips, st.network)

    def teardown(self, sandbox_id: str) -> None:
        """StopPodSandbox's part: detach, then unpin."""
        path = self.netns_path(sandbox_id)
        self.run(self.manager.teardown_pod(sandbox_id, path))
        netns.remove(path)

    def close(self) -> None:
        for sandbox_id in self.pods:
            try:
                self.teardown(sandbox_id)
            except Exception:  # noqa: BLE001 - best effort: the leak check reports what is left
                pass
        try:
            self.run(self.manager.remove_builtin_network())
        except Exception:  # noqa: BLE001
            pass
        self.manager.close()
        delete_link(CNI_BRIDGE)
        self.store.close()
        self.loop.close()


# ---------------------------------------------------------------- servers and clients


@contextmanager
def httpd(pin: Path, docroot: Path, body: str, port: int = 80) -> Iterator[subprocess.Popen[bytes]]:
    """A real busybox httpd process inside the pod's netns (via nsenter), serving `body` at /."""
    docroot.mkdir(parents=True, exist_ok=True)
    (docroot / "index.html").write_text(body)
    proc = subprocess.Popen(["nsenter", f"--net={pin}", "busybox", "httpd", "-f", "-p", str(port),
                             "-h", str(docroot)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(pin, port)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_listening(pin: Path, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            netns.open_connection_in_netns(pin, "127.0.0.1", port, timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http_get(host: str, port: int, timeout: float = 5.0) -> str:
    """GET / over a plain socket (no proxy settings involved); returns the body."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body.decode()


def http_get_in(pin: Path, host: str, port: int) -> str:
    """GET from inside a netns with a real process: busybox wget under nsenter.

    No `-T`: Debian busybox-static 1.35 wget segfaults with it; the subprocess timeout bounds it instead.
    """
    out = subprocess.run(["nsenter", f"--net={pin}", "busybox", "wget", "-q", "-O", "-",
                          f"http://{host}:{port}/"], capture_output=True, text=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"wget exit {out.returncode}: {out.stdout!r} {out.stderr!r}"
    return out.stdout


@contextmanager
def udp_echo(pin: Path, port: int) -> Iterator[None]:
    """A UDP echo server whose socket lives in the pod's netns (served by a thread of this process)."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        return s
    sock = netns.run_in_netns(pin, make)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(b"echo:" + data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sock.close()


def udp_ask(host: str, port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (host, port))
        return s.recvfrom(2048)[0]


# ---------------------------------------------------------------- host inspection


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=name):
            ipr.link("del", ifname=name)


def nft_elements(table: str = TABLE) -> list[Any]:
    out = subprocess.run(["nft", "-j", "list", "table", "ip", table], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    elems = []
    for item in json.loads(out.stdout)["nftables"]:
        if "map" in item:
            elems.extend(item["map"].get("elem", []))
    return elems


def host_address() -> str:
    """A global IPv4 address of this host outside the test subnets (e.g. eth0's)."""
    tests = [ipaddress.ip_network(n) for n in (SUBNET, CNI_SUBNET, "10.233.0.0/16", "10.231.0.0/16")]
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            ip = ipaddress.ip_address(a.get("address"))
            if not ip.is_loopback and not any(ip in n for n in tests):
                return str(ip)
    raise AssertionError("this host has no global IPv4 address")


@contextmanager
def outside_host(workdir: Path) -> Iterator[Path]:
    """A second "host": a netns linked to this one by a veth, routed via OUTSIDE_HOST_IP."""
    pin = netns.create(workdir / "outside")
    try:
        with IPRoute() as ipr:
            fd = open(pin, "rb")
            try:
                ipr.link("add", ifname=OUTSIDE_LINK, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd.fileno()})
            finally:
                fd.close()
            index = ipr.link_lookup(ifname=OUTSIDE_LINK)[0]
            ipr.addr("add", index=index, address=OUTSIDE_HOST_IP, prefixlen=30)
            ipr.link("set", index=index, state="up")

        def inside() -> None:
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=index, address=OUTSIDE_PEER_IP, prefixlen=30)
                ipr.link("set", index=index, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=OUTSIDE_HOST_IP)
        netns.run_in_netns(pin, inside)
        yield pin
    finally:
        delete_link(OUTSIDE_LINK)
        netns.remove(pin)


def remove_workdir(workdir: Path) -> None:
    pins = workdir / "state" / "netns"
    if pins.is_dir():
        for pin in pins.iterdir():
            netns.remove(pin)
    shutil.rmtree(workdir, ignore_errors=True)
