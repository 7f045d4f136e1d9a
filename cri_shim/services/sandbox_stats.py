"""PodSandboxStats and ListPodSandboxStats: the pod's cgroup usage plus each running container's stats."""

from __future__ import annotations

import asyncio
import contextlib
import time

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import CriError, FailedPrecondition
from cri_shim.services import windows_pods
from cri_shim.services.backend_errors import mapped
from cri_shim.services.container_stats import cpu_usage, memory_usage, to_stats
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import ContainerState
from cri_shim.store.records import labels_match
from cri_shim.store.sandbox import Sandbox, SandboxState


async def stats_of(state: RuntimeState, sb: Sandbox) -> pb.PodSandboxStats:
    backend = state.backend(sb.handler)
    with mapped(f"cannot read the stats of pod sandbox {sb.id}"):
        s = await backend.sandbox_stats(sb.id)
    ts = s.timestamp_ns or time.time_ns()
    cfg = sb.config
    attributes = pb.PodSandboxAttributes(id=sb.id, metadata=cfg.metadata, labels=cfg.labels,
                                         annotations=cfg.annotations)
    if windows_pods.is_windows(sb):
        return pb.PodSandboxStats(attributes=attributes, windows=windows_pods.pod_stats(state, sb, s))
    linux = pb.LinuxPodSandboxStats(cpu=cpu_usage(ts, s.cpu_usage_ns), memory=memory_usage(ts, s))
    if s.pids is not None:
        linux.process.timestamp = ts
        linux.process.process_count.value = s.pids
    for cid, cs in s.containers.items():
        c = state.containers.get(cid)
        if c is not None and c.state is ContainerState.RUNNING:
            linux.containers.append(to_stats(c, cs))
    return pb.PodSandboxStats(attributes=attributes, linux=linux)


async def pod_sandbox_stats(state: RuntimeState, request: pb.PodSandboxStatsRequest) -> pb.PodSandboxStatsResponse:
    sb = state.sandbox(request.pod_sandbox_id)
    if sb.state is not SandboxState.READY:
        raise FailedPrecondition(f"pod sandbox {sb.id} is not ready: stats exist only for ready sandboxes")
    return pb.PodSandboxStatsResponse(stats=await stats_of(state, sb))


def matches(sb: Sandbox, f: pb.PodSandboxStatsFilter) -> bool:
    if sb.state is not SandboxState.READY:
        return False
    if f.id and not sb.id.startswith(f.id):
        return False
    return labels_match(dict(sb.config.labels), f.label_selector)


async def _maybe_stats(state: RuntimeState, sb: Sandbox) -> pb.PodSandboxStats | None:
    with contextlib.suppress(CriError):
        return await stats_of(state, sb)
    return None


async def list_pod_sandbox_stats(state: RuntimeState, request: pb.ListPodSandboxStatsRequest
                                 ) -> pb.ListPodSandboxStatsResponse:
    chosen = sorted(state.sandboxes.matching(lambda sb: matches(sb, request.filter)), key=lambda sb: sb.created_at)
    results = await asyncio.gather(*(_maybe_stats(state, sb) for sb in chosen))
    return pb.ListPodSandboxStatsResponse(stats=[s for s in results if s is not None])
