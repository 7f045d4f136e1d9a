"""The pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, written into its sandbox dir.

The pod shim bind-mounts these three files into every container of the pod
(unless a container mounts its own). resolv.conf comes from the pod's
dns_config when kubelet sends one (ClusterFirst pods), else the host's.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument

HOST_RESOLV = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")
MAX_HOSTNAME = 64
DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def check_hostname(hostname: str) -> None:
    if len(hostname) > MAX_HOSTNAME or any(c.isspace() or c in "\0/" for c in hostname):
        raise InvalidArgument(f"config.hostname: {hostname!r} is not a valid hostname "
                              f"(at most {MAX_HOSTNAME} characters, no spaces or slashes)")


def check_dns(dns: pb.DNSConfig) -> None:
    for field_name, values in (("servers", dns.servers), ("searches", dns.searches), ("options", dns.options)):
        for v in values:
            if not v or any(c.isspace() or c == "\0" for c in v):
                raise InvalidArgument(f"config.dns_config.{field_name}: {v!r} is not valid "
                                      "(empty, or contains whitespace)")


def pod_hostname(config: pb.PodSandboxConfig) -> str:
    return config.hostname or socket.gethostname()


def resolv_conf(dns: pb.DNSConfig) -> str:
    if not (dns.servers or dns.searches or dns.options):
        try:
            return HOST_RESOLV.read_text()
        except OSError:
            return ""
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_file() -> str:
    try:
        return HOST_HOSTS.read_text()
    except OSError:
        return DEFAULT_HOSTS


def pod_hosts_file(ips: tuple[str, ...], hostname: str) -> str:
    """A pod network's /etc/hosts: localhost, then the pod's own addresses under its hostname."""
    return DEFAULT_HOSTS + "".join(f"{ip}\t{hostname}\n" for ip in ips)


def write_file(directory: Path, name: str, text: str) -> None:
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / name)  # containers bind-mount the file: replace it whole, never half-written


def write_sandbox_files(directory: Path, config: pb.PodSandboxConfig, hostname: str) -> None:
    """hostname, resolv.conf, and hosts (the host's for now; a pod network rewrites it once its IPs are known)."""
    directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    for name, text in (("hostname", hostname + "\n"), ("hosts", hosts_file()),
                       ("resolv.conf", resolv_conf(config.dns_config))):
        write_file(directory, name, text)
