"""The per-pod /etc/resolv.conf, /etc/hostname and /etc/hosts.

They are written once into the sandbox directory; the pod shim bind-mounts
them into every container of the pod (CRI's kubelet does not manage them for
the runtime, except /etc/hosts for Kubernetes pods, which overrides ours).
Content follows containerd: resolv.conf from the pod's DNS config, or a copy
of the host's when the pod sets none; /etc/hosts with the localhost entries
and the pod's IP and hostname (a copy of the host's for host-network pods).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cri_shim.network.types import DnsConfig

RESOLV_CONF = "resolv.conf"
HOSTNAME = "hostname"
HOSTS = "hosts"

LOCALHOST_ENTRIES = (
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("fe00::0", "ip6-mcastprefix"),
    ("fe00::1", "ip6-allnodes"),
    ("fe00::2", "ip6-allrouters"),
)
MAX_HOST_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class HostFiles:
    """Where the host's own files are read from (configurable for tests and odd hosts)."""

    resolv_conf: Path = Path("/etc/resolv.conf")
    hosts: Path = Path("/etc/hosts")


def resolv_conf_text(dns: DnsConfig, host: HostFiles) -> str:
    if dns.empty:
        return _read_host_file(host.resolv_conf)
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_text(hostname: str, ips: tuple[str, ...], host_network: bool, host: HostFiles) -> str:
    if host_network:
        return _read_host_file(host.hosts)
    lines = [f"{ip}\t{names}" for ip, names in LOCALHOST_ENTRIES]
    lines.extend(f"{ip}\t{hostname}" for ip in ips if hostname)
    return "\n".join(lines) + "\n"


def pod_hostname(hostname: str, host_network: bool) -> str:
    """The pod's hostname; a host-network pod without one gets the node's (as kubelet would report)."""
    if not hostname and host_network:
        return socket.gethostname()
    return hostname


def write_pod_files(sandbox_dir: Path, hostname: str, dns: DnsConfig, ips: tuple[str, ...],
                    host_network: bool, host: HostFiles) -> dict[str, Path]:
    """Write the three files into `sandbox_dir`; returns container path -> file written."""
    name = pod_hostname(hostname, host_network)
    contents = {
        "/etc/resolv.conf": (RESOLV_CONF, resolv_conf_text(dns, host)),
        "/etc/hostname": (HOSTNAME, name + "\n" if name else ""),
        "/etc/hosts": (HOSTS, hosts_text(name, ips, host_network, host)),
    }
    written = {}
    for target, (filename, text) in contents.items():
        path = sandbox_dir / filename
        _write_atomic(path, text)
        written[target] = path
    return written


def remove_pod_files(sandbox_dir: Path) -> None:
    for filename in (RESOLV_CONF, HOSTNAME, HOSTS):
        try:
            (sandbox_dir / filename).unlink()
        except FileNotFoundError:
            pass


def _read_host_file(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HOST_FILE_BYTES)
    except FileNotFoundError:
        return ""  # a host without the file: the pod gets an empty one, as it would see on the host
    return data.decode("utf-8", errors="replace")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o644)  # readable by every container user whatever the daemon's umask
        f.write(text.encode())
    os.replace(tmp, path)
