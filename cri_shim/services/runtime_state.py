"""Everything the pod and container services share, built once by the daemon at startup.

The services (sandbox_*.py, container_*.py) are functions of a `RuntimeState`
and a request. It holds the in-memory indexes (persisted to SQLite), the name
reservations and in-flight creations, the event broadcaster, the runtime
handlers (backends), the pod network, the image store, the streaming URL
maker, the failpoints and the phase timers. Paths of everything the daemon
makes for a pod or container are derived from the object's id here, so
rollback, removal and restart recovery all find the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cri_shim.api import api_pb2 as pb
from cri_shim.network.manager import NetworkStatus
from cri_shim.config import Config
from cri_shim.errors import NotFound
from cri_shim.images.store import ImageStore
from cri_shim.services import container_list, sandbox_list
from cri_shim.services.events import EventBroadcaster
from cri_shim.services.failpoints import Failpoints
from cri_shim.services.list_cache import ConvertedCache
from cri_shim.services.phases import PhaseTimers
from cri_shim.store.container import Container
from cri_shim.store.inflight import InflightCreations
from cri_shim.store.names import NameRegistry
from cri_shim.store.records import RecordStore
from cri_shim.store.sandbox import Sandbox
from runtime.base import Backend

log = logging.getLogger(__name__)

EXEC_SYNC_OUTPUT_CAP = 16 << 20   # per stream (CVE-2022-1708 / CVE-2022-31030)


class PodNetwork(Protocol):
    """The pod network as the lifecycle uses it (CNI or the built-in bridge live behind it)."""

    async def setup(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> tuple[str, ...]:
        """Attach the pod's network namespace; returns its IPs (primary first). Undo itself on failure."""
        ...

    async def teardown(self, sandbox_id: str, netns_path: str, config: pb.PodSandboxConfig) -> None:
        """Detach and release everything `setup` made (IPs, links, host ports). Idempotent."""
        ...

    def status(self) -> NetworkStatus:
        """Whether pods can get a network now (NetworkReady), with an actionable message."""
        ...

    async def gc(self, known_sandboxes: set[str]) -> list[str]:
        """Release the network of every sandbox not in `known_sandboxes` (crash leftovers); their ids."""
        ...


class HcnNamespaces(Protocol):
    """Windows pods' HCN network namespaces (runtime.windows.network.NamespaceManager)."""

    def namespace_id(self, sandbox_id: str) -> str:
        """The namespace GUID of a pod (derived from its id, so cleanup finds it after a crash)."""
        ...

    def ensure(self, sandbox_id: str) -> str:
        """Create the pod's namespace if it does not exist; its GUID."""
        ...

    def delete(self, namespace: str) -> None:
        """Detach leftover endpoints and delete; a namespace that is gone is fine."""
        ...

    def gc(self, known_sandboxes: set[str]) -> list[str]:
        """Delete the namespaces this daemon made whose pod is not in `known_sandboxes` (restart); their GUIDs."""
        ...


@dataclass(frozen=True)
class WindowsHandlers:
    """Which runtime handlers run Windows pods, and their HCN namespaces (None: no HCN on this node)."""

    names: frozenset[str] = frozenset()
    namespaces: HcnNamespaces | None = None


class StreamUrls(Protocol):
    """The streaming server's URL side (cri_shim.streaming.StreamingServer)."""

    def exec_url(self, container_id: str, cmd: list[str] | tuple[str, ...], tty: bool, stdin: bool, stdout: bool,
                 stderr: bool) -> str: ...

    def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str: ...

    def portforward_url(self, sandbox_id: str, ports: list[int] | tuple[int, ...] = ()) -> str: ...


class KeyedLocks:
    """One asyncio lock per object id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass
class RuntimeState:
    config: Config
    images: ImageStore
    sandboxes: RecordStore[Sandbox]
    containers: RecordStore[Container]
    handlers: dict[str, Backend]
    network: PodNetwork
    failpoints: Failpoints
    phases: PhaseTimers
    streaming: StreamUrls | None = None
    windows: WindowsHandlers = field(default_factory=WindowsHandlers)
    events: EventBroadcaster = field(default_factory=EventBroadcaster)
    sandbox_names: NameRegistry = field(default_factory=lambda: NameRegistry("sandbox"))
    container_names: NameRegistry = field(default_factory=lambda: NameRegistry("container"))
    sandbox_inflight: InflightCreations = field(init=False)
    container_inflight: InflightCreations = field(init=False)
    sandbox_items: ConvertedCache[Sandbox, pb.PodSandbox] = field(
        default_factory=lambda: ConvertedCache(sandbox_list.to_pod_sandbox))
    container_items: ConvertedCache[Container, pb.Container] = field(
        default_factory=lambda: ConvertedCache(container_list.to_container))
    sandbox_locks: KeyedLocks = field(default_factory=KeyedLocks)
    container_locks: KeyedLocks = field(default_factory=KeyedLocks)

    def __post_init__(self) -> None:
        claim = self.config.lifecycle.creation_claim_timeout
        self.sandbox_inflight = InflightCreations("sandbox", claim)
        self.container_inflight = InflightCreations("container", claim)

    # ------------------------------------------------------------ paths (derived from ids only)

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """hostname, hosts, resolv.conf of the pod (persistent: the shim bind-mounts them)."""
        return self.config.root_dir / "sandboxes" / sandbox_id

    def netns_path(self, sandbox_id: str) -> Path:
        return self.config.state_dir / "netns" / sandbox_id

    def container_dir(self, container_id: str) -> Path:
        """bundle/config.json and scratch/ (the overlay upper and work dirs)."""
        return self.config.root_dir / "containers" / container_id

    # ------------------------------------------------------------ lookups

    def backend(self, handler: str) -> Backend:
        backend = self.handlers.get(handler)
        if backend is None:
            known = ", ".join(repr(h) for h in sorted(self.handlers))
            raise NotFound(f"runtime handler {handler!r} is not configured (known handlers: {known})")
        return backend

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """A visible sandbox by id or unique id prefix, else NotFound."""
        sb = self.sandboxes.find(sandbox_id) if sandbox_id else None
        if sb is None or sb.state.value == "creating":
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return sb

    def container(self, container_id: str) -> Container:
        c = self.containers.find(container_id) if container_id else None
        if c is None or c.state.value == "creating":
            raise NotFound(f"container {container_id!r} not found")
        return c

    def backend_of_container(self, c: Container) -> Backend:
        sb = self.sandboxes.get(c.sandbox_id)
        if sb is None:
            raise NotFound(f"the pod sandbox {c.sandbox_id} of container {c.id} is gone")
        return self.backend(sb.handler)

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return list(self.containers.matching(lambda c: c.sandbox_id == sandbox_id))
