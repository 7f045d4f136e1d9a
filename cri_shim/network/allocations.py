"""Pod IPs of the built-in network and published hostPorts, in the metadata store.

Both live in the database so they survive a daemon restart and so that one
transaction decides them: an IP is never handed out twice (it is the primary
key), and a hostPort another pod already publishes is refused before anything
about the new pod exists. IPs are handed out round-robin from the last one
given, like CNI's host-local, so a just-released address (still in peers' ARP
and conntrack tables) is the last to be reused.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import dataclass

from cri_shim.errors import AlreadyExists, ResourceExhausted
from cri_shim.network.types import PortMapping, PortProtocol, normalize_host_ip
from cri_shim.store.db import MetadataStore

NEXT_IP_SETTING = "network.builtin.last_ip:"


@dataclass(frozen=True)
class HostPort:
    protocol: PortProtocol
    host_port: int
    host_ip: str           # "" = every address
    container_port: int
    sandbox_id: str

    def describe(self) -> str:
        return f"{self.host_port}/{self.protocol.value} on {self.host_ip or 'every host address'}"


class Allocations:
    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    def reserve(self, sandbox_id: str, pod: str, host_ports: tuple[PortMapping, ...],
                subnet: ipaddress.IPv4Network | None) -> str | None:
        """Publish `host_ports` for the sandbox and, with `subnet`, give it an IP (both or neither).

        Idempotent for the same sandbox: a retried setup gets the same IP back.
        """
        with self._store.transaction() as conn:
            for i, m in enumerate(host_ports):
                self._claim_port(conn, sandbox_id, pod, i, m)
            if subnet is None:
                return None
            return self._allocate_ip(conn, sandbox_id, subnet)

    def release(self, sandbox_id: str) -> None:
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM network_ips WHERE sandbox_id = ?", (sandbox_id,))
            conn.execute("DELETE FROM network_hostports WHERE sandbox_id = ?", (sandbox_id,))

    def ip_of(self, sandbox_id: str) -> str | None:
        rows = self._store.query("SELECT ip FROM network_ips WHERE sandbox_id = ?", (sandbox_id,))
        return str(rows[0]["ip"]) if rows else None

    def host_ports_of(self, sandbox_id: str) -> list[HostPort]:
        rows = self._store.query("SELECT protocol, host_port, host_ip, container_port, sandbox_id "
                                 "FROM network_hostports WHERE sandbox_id = ? ORDER BY rowid", (sandbox_id,))
        return [_host_port(r) for r in rows]

    def sandboxes(self) -> set[str]:
        """Every sandbox holding an IP or a hostPort (for garbage collection at startup)."""
        rows = self._store.query("SELECT sandbox_id FROM network_ips UNION SELECT sandbox_id FROM network_hostports")
        return {str(r["sandbox_id"]) for r in rows}

    def _claim_port(self, conn: sqlite3.Connection, sandbox_id: str, pod: str, index: int, m: PortMapping) -> None:
        host_ip = normalize_host_ip(m.host_ip)
        rows = conn.execute(
            "SELECT host_ip, sandbox_id, pod FROM network_hostports WHERE protocol = ? AND host_port = ? "
            "AND (host_ip = ? OR host_ip = '' OR ? = '')",
            (m.protocol.value, m.host_port, host_ip, host_ip)).fetchall()
        for other_ip, other_sandbox, other_pod in rows:
            if other_sandbox == sandbox_id:
                continue
            where = other_ip or "every host address"
            raise AlreadyExists(f"port_mappings[{index}]: host port {m.host_port}/{m.protocol.value} on "
                                f"{host_ip or 'every host address'} is already published by pod {other_pod} "
                                f"(sandbox {other_sandbox[:13]}, on {where}); choose another host_port or stop "
                                "that pod")
        conn.execute("INSERT OR REPLACE INTO network_hostports(protocol, host_port, host_ip, sandbox_id, pod, "
                     "container_port) VALUES (?, ?, ?, ?, ?, ?)",
                     (m.protocol.value, m.host_port, host_ip, sandbox_id, pod, m.container_port))

    def _allocate_ip(self, conn: sqlite3.Connection, sandbox_id: str, subnet: ipaddress.IPv4Network) -> str:
        key = str(subnet)
        row = conn.execute("SELECT ip FROM network_ips WHERE subnet = ? AND sandbox_id = ?",
                           (key, sandbox_id)).fetchone()
        if row:
            return str(row[0])
        taken = {int(ipaddress.IPv4Address(r[0]))
                 for r in conn.execute("SELECT ip FROM network_ips WHERE subnet = ?", (key,))}
        first = int(subnet.network_address) + 2          # +1 is the gateway (the bridge)
        last = int(subnet.broadcast_address) - 1
        size = last - first + 1
        setting = conn.execute("SELECT value FROM settings WHERE key = ?", (NEXT_IP_SETTING + key,)).fetchone()
        previous = int(ipaddress.IPv4Address(setting[0])) if setting else last
        start = previous + 1 if first <= previous < last else first
        for step in range(size):
            candidate = first + (start - first + step) % size
            if candidate not in taken:
                ip = str(ipaddress.IPv4Address(candidate))
                conn.execute("INSERT INTO network_ips(subnet, ip, sandbox_id) VALUES (?, ?, ?)", (key, ip, sandbox_id))
                conn.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                             "SET value = excluded.value", (NEXT_IP_SETTING + key, ip))
                return ip
        raise ResourceExhausted(f"the built-in network {key} has no free address left ({size} pods hold one); "
                                "stop pods or configure a larger network.builtin_subnet")


def _host_port(row: sqlite3.Row) -> HostPort:
    return HostPort(protocol=PortProtocol(row["protocol"]), host_port=int(row["host_port"]),
                    host_ip=str(row["host_ip"]), container_port=int(row["container_port"]),
                    sandbox_id=str(row["sandbox_id"]))
