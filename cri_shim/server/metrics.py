"""Prometheus metrics of one daemon, in its own registry (no process globals).

Later subsystems register their own collectors on `Metrics.registry`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# RPC latencies span ~100 us (List*) to minutes (PullImage).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.rpc_requests = Counter(
            "cri_shim_grpc_requests", "CRI requests handled, by method and gRPC status code.",
            ["method", "code"], registry=self.registry)
        self.rpc_latency = Histogram(
            "cri_shim_grpc_request_duration_seconds", "Time to answer a CRI request, by method.",
            ["method"], buckets=RPC_BUCKETS, registry=self.registry)
        self._server: Any = None

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server on a thread; returns the port actually bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
