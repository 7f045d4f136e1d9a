"""ContainerStats and ListContainerStats: cgroup usage and writable-layer size, read by the pod shims.

ListContainerStats covers the running containers that match the filter; they
are asked concurrently, and one that vanishes meanwhile is left out rather
than failing the whole list (kubelet calls it for /stats/summary).
"""

from __future__ import annotations

import asyncio
import contextlib

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import CriError, FailedPrecondition
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import Container, ContainerState
from cri_shim.store.records import labels_match
from runtime import base


def _u64(value: int | None) -> pb.UInt64Value | None:
    return None if value is None else pb.UInt64Value(value=max(0, int(value)))


def cpu_usage(ts: int, usage_ns: int | None) -> pb.CpuUsage:
    cpu = pb.CpuUsage(timestamp=ts)
    if usage_ns is not None:
        cpu.usage_core_nano_seconds.value = usage_ns
    return cpu


def memory_usage(ts: int, s: base.ContainerStats | base.SandboxStats) -> pb.MemoryUsage:
    mem = pb.MemoryUsage(timestamp=ts)
    for name, value in (("working_set_bytes", s.memory_working_set_bytes), ("usage_bytes", s.memory_usage_bytes),
                        ("rss_bytes", s.memory_rss_bytes)):
        if value is not None:
            getattr(mem, name).value = max(0, value)
    if isinstance(s, base.ContainerStats):
        for name, value in (("available_bytes", s.memory_available_bytes), ("page_faults", s.page_faults),
                            ("major_page_faults", s.major_page_faults)):
            if value is not None:
                getattr(mem, name).value = max(0, value)
    return mem


def to_stats(c: Container, s: base.ContainerStats) -> pb.ContainerStats:
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(id=c.id, metadata=c.config.metadata, labels=c.config.labels,
                                          annotations=c.config.annotations),
        cpu=cpu_usage(s.timestamp_ns, s.cpu_usage_ns), memory=memory_usage(s.timestamp_ns, s))
    layer = pb.FilesystemUsage(timestamp=s.timestamp_ns,
                               fs_id=pb.FilesystemIdentifier(mountpoint=s.writable_layer_mountpoint))
    if s.writable_layer_bytes is not None:
        layer.used_bytes.value = s.writable_layer_bytes
    if s.writable_layer_inodes is not None:
        layer.inodes_used.value = s.writable_layer_inodes
    stats.writable_layer.CopyFrom(layer)
    return stats


async def stats_of(state: RuntimeState, c: Container) -> pb.ContainerStats:
    backend = state.backend_of_container(c)
    with mapped(f"cannot read the stats of container {c.id}"):
        return to_stats(c, await backend.container_stats(c.id))


async def container_stats(state: RuntimeState, request: pb.ContainerStatsRequest) -> pb.ContainerStatsResponse:
    c = state.container(request.container_id)
    if c.state is not ContainerState.RUNNING:
        raise FailedPrecondition(f"container {c.id} is {c.state.value}: stats exist only for running containers")
    return pb.ContainerStatsResponse(stats=await stats_of(state, c))


def matches(c: Container, f: pb.ContainerStatsFilter) -> bool:
    if c.state is not ContainerState.RUNNING:
        return False
    if f.id and not c.id.startswith(f.id):
        return False
    if f.pod_sandbox_id and not c.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    return labels_match(dict(c.config.labels), f.label_selector)


async def _maybe_stats(state: RuntimeState, c: Container) -> pb.ContainerStats | None:
    with contextlib.suppress(CriError):
        return await stats_of(state, c)
    return None


async def list_container_stats(state: RuntimeState, request: pb.ListContainerStatsRequest
                               ) -> pb.ListContainerStatsResponse:
    chosen = sorted(state.containers.matching(lambda c: matches(c, request.filter)), key=lambda c: c.created_at)
    results = await asyncio.gather(*(_maybe_stats(state, c) for c in chosen))
    return pb.ListContainerStatsResponse(stats=[s for s in results if s is not None])
