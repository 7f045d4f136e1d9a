"""What the daemon tells the network layer about a pod, and what it gets back.

`pod_from_cri` turns a CRI `PodSandboxConfig` into a `PodNetworkSpec` and is
where every network field of the request is validated: a bad port mapping, a
protocol CRI does not define, a DNS server that is not an IP address or an
unparsable bandwidth annotation is an `InvalidArgument` that names the field,
raised before anything is created.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument

INGRESS_BANDWIDTH = "kubernetes.io/ingress-bandwidth"
EGRESS_BANDWIDTH = "kubernetes.io/egress-bandwidth"
# kubelet's own bounds for the bandwidth annotations (pkg/util/bandwidth): 1k .. 1P bits per second.
MIN_BANDWIDTH = 1000
MAX_BANDWIDTH = 10**15
# resolv.conf limits glibc and kubelet enforce (kubelet: validateDNSSearch, MaxDNSSearchPaths).
MAX_DNS_SEARCHES = 32
MAX_DNS_SEARCH_CHARS = 2048
MAX_DNS_SERVERS = 3


class PortProtocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


_CRI_PROTOCOLS = {0: PortProtocol.TCP, 1: PortProtocol.UDP, 2: PortProtocol.SCTP}


@dataclass(frozen=True)
class PortMapping:
    protocol: PortProtocol
    container_port: int
    host_port: int = 0        # 0 = no hostPort (informational only)
    host_ip: str = ""         # "" = every address of the host


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.servers or self.searches or self.options)


@dataclass(frozen=True)
class Bandwidth:
    """Bits per second, from the pod's kubernetes.io/{ingress,egress}-bandwidth annotations."""

    ingress_rate: int | None = None
    egress_rate: int | None = None


@dataclass(frozen=True)
class PodNetworkSpec:
    sandbox_id: str
    name: str
    namespace: str
    uid: str
    hostname: str
    host_network: bool = False
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DnsConfig = field(default_factory=DnsConfig)
    bandwidth: Bandwidth = field(default_factory=Bandwidth)
    cgroup_parent: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def host_ports(self) -> tuple[PortMapping, ...]:
        """The mappings that publish a port on the host (host_port > 0)."""
        return tuple(m for m in self.port_mappings if m.host_port > 0)


@dataclass(frozen=True)
class PodNetworkStatus:
    ips: tuple[str, ...] = ()          # primary first (IPv4 before IPv6, as containerd reports)
    network: str = ""                  # "builtin", a CNI network name, or "host"

    @property
    def ip(self) -> str:
        return self.ips[0] if self.ips else ""


@dataclass(frozen=True)
class NetworkReadiness:
    ready: bool
    reason: str
    message: str


# ---------------------------------------------------------------- from CRI


def pod_from_cri(sandbox_id: str, config: pb.PodSandboxConfig) -> PodNetworkSpec:
    """The network part of a RunPodSandbox request, validated."""
    linux = config.linux
    host_network = linux.security_context.namespace_options.network == pb.NODE
    return PodNetworkSpec(
        sandbox_id=sandbox_id,
        name=config.metadata.name,
        namespace=config.metadata.namespace,
        uid=config.metadata.uid,
        hostname=config.hostname,
        host_network=host_network,
        port_mappings=tuple(port_mapping_from_cri(i, m) for i, m in enumerate(config.port_mappings)),
        dns=dns_from_cri(config.dns_config) if config.HasField("dns_config") else DnsConfig(),
        bandwidth=bandwidth_from_annotations(config.annotations),
        cgroup_parent=linux.cgroup_parent,
        annotations=dict(config.annotations),
    )


def port_mapping_from_cri(index: int, m: pb.PortMapping) -> PortMapping:
    where = f"port_mappings[{index}]"
    proto = _CRI_PROTOCOLS.get(int(m.protocol))
    if proto is None:
        raise InvalidArgument(f"{where}.protocol: unknown protocol {int(m.protocol)} "
                              "(supported: TCP=0, UDP=1, SCTP=2)")
    return PortMapping(protocol=proto, container_port=m.container_port, host_port=m.host_port, host_ip=m.host_ip)


def dns_from_cri(d: pb.DNSConfig) -> DnsConfig:
    return DnsConfig(servers=tuple(d.servers), searches=tuple(d.searches), options=tuple(d.options))


def validate(spec: PodNetworkSpec) -> None:
    """Raise InvalidArgument naming the first bad network field of `spec`."""
    for text, what in ((spec.name, "metadata.name"), (spec.namespace, "metadata.namespace"),
                       (spec.uid, "metadata.uid")):
        # CNI_ARGS is "K=V;K=V": a ';' or '=' in a value would inject arguments into every plugin.
        if any(c in text for c in ";=\0\n"):
            raise InvalidArgument(f"{what}: {text!r} must not contain ';', '=', NUL or newlines")
    if "\0" in spec.hostname or "\n" in spec.hostname or len(spec.hostname) > 64:
        raise InvalidArgument(f"hostname: {spec.hostname!r} is not a valid hostname (at most 64 characters)")
    validate_port_mappings(spec.port_mappings)
    validate_dns(spec.dns)


def validate_port_mappings(mappings: tuple[PortMapping, ...]) -> None:
    seen: dict[tuple[PortProtocol, int, str], int] = {}
    for i, m in enumerate(mappings):
        where = f"port_mappings[{i}]"
        if not isinstance(m.protocol, PortProtocol):
            raise InvalidArgument(f"{where}.protocol: {m.protocol!r} is not TCP, UDP or SCTP")
        if not 1 <= m.container_port <= 65535:
            raise InvalidArgument(f"{where}.container_port: must be 1-65535, got {m.container_port}")
        if not 0 <= m.host_port <= 65535:
            raise InvalidArgument(f"{where}.host_port: must be 0-65535 (0 = no host port), got {m.host_port}")
        if m.host_ip:
            try:
                ipaddress.ip_address(m.host_ip)
            except ValueError:
                raise InvalidArgument(f"{where}.host_ip: {m.host_ip!r} is not an IP address") from None
        if m.host_port == 0:
            continue
        key = (m.protocol, m.host_port, normalize_host_ip(m.host_ip))
        for (proto, port, ip), j in seen.items():
            if proto == key[0] and port == key[1] and (not ip or not key[2] or ip == key[2]):
                raise InvalidArgument(f"{where}: host port {m.host_port}/{m.protocol.value} is already "
                                      f"published by port_mappings[{j}] of the same pod")
        seen[key] = i


def normalize_host_ip(host_ip: str) -> str:
    """"" for every address ("", 0.0.0.0 and :: all mean that), else the canonical IP text."""
    if not host_ip:
        return ""
    ip = ipaddress.ip_address(host_ip)
    return "" if ip.is_unspecified else str(ip)


_DNS_OPTION = re.compile(r"^[A-Za-z0-9_.:+-]+$")
_DNS_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def validate_dns(d: DnsConfig) -> None:
    for i, server in enumerate(d.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"dns_config.servers[{i}]: {server!r} is not an IP address") from None
    if len(d.searches) > MAX_DNS_SEARCHES:
        raise InvalidArgument(f"dns_config.searches: {len(d.searches)} domains; at most {MAX_DNS_SEARCHES} are allowed")
    if len(" ".join(d.searches)) > MAX_DNS_SEARCH_CHARS:
        raise InvalidArgument(f"dns_config.searches: longer than {MAX_DNS_SEARCH_CHARS} characters in total")
    for i, search in enumerate(d.searches):
        if len(search) > 253 or not _DNS_NAME.match(search):
            raise InvalidArgument(f"dns_config.searches[{i}]: {search!r} is not a DNS domain name")
    for i, option in enumerate(d.options):
        if not _DNS_OPTION.match(option):
            raise InvalidArgument(f"dns_config.options[{i}]: {option!r} is not a resolv.conf option "
                                  "(e.g. ndots:5, edns0)")


# ---------------------------------------------------------------- bandwidth annotations

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kMGTPE]i?|m)?$")
_SUFFIX = {None: 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("10M", "1Gi", "500k") as an integer; ValueError if malformed."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity (e.g. 10M, 1Gi)")
    return int(float(match.group(1)) * _SUFFIX[match.group(2)])


def bandwidth_from_annotations(annotations: Mapping[str, str]) -> Bandwidth:
    rates: dict[str, int | None] = {}
    for key in (INGRESS_BANDWIDTH, EGRESS_BANDWIDTH):
        text = annotations.get(key)
        if text is None:
            rates[key] = None
            continue
        try:
            value = parse_quantity(text)
        except ValueError as e:
            raise InvalidArgument(f"annotations[{key}]: {e}") from None
        if not MIN_BANDWIDTH <= value <= MAX_BANDWIDTH:
            raise InvalidArgument(f"annotations[{key}]: {text!r} is outside 1k..1P bits per second")
        rates[key] = value
    return Bandwidth(ingress_rate=rates[INGRESS_BANDWIDTH], egress_rate=rates[EGRESS_BANDWIDTH])
