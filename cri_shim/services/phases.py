"""Per-phase timers of pod and container start, so a slow start can be explained.

Each phase (name reservation, netns, network setup, rootfs, shim spawn,
create, start) is observed into one Prometheus histogram labelled by phase,
and logged at debug with the object it belongs to.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger(__name__)

PHASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The phases, in the order a pod start goes through them.
RESERVE = "name_reservation"
NETNS = "netns"
NETWORK = "network_setup"
SANDBOX_FILES = "sandbox_files"
SHIM_SPAWN = "shim_spawn"
ROOTFS = "rootfs"
SPEC = "spec"
CREATE = "create"
START = "start"


class PhaseTimers:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram(
            "cri_shim_lifecycle_phase_duration_seconds",
            "Time spent in each phase of RunPodSandbox, CreateContainer and StartContainer.",
            ["phase"], buckets=PHASE_BUCKETS, registry=registry)

    @contextlib.contextmanager
    def time(self, phase: str, subject: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            self._histogram.labels(phase).observe(elapsed)
            log.debug("%s: phase %s took %.1fms", subject[:13], phase, elapsed * 1000)
