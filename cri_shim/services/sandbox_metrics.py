"""ListMetricDescriptors and ListPodSandboxMetrics: cAdvisor-compatible `container_*` series from the runtime.

kubelet (gate PodAndContainerStatsFromCRI) re-exports these on /metrics/cadvisor,
so names, label keys and units follow cAdvisor: every series carries the labels
container, id, image, name, namespace, pod (plus interface / device / failure
type where cAdvisor has them). Values are what the kernel reports for the
container's cgroup and processes (runtime/linux/metrics.py); a value this host
cannot provide is left out, never reported as 0. Network counters are per pod
(its network namespace), under container "POD" as cAdvisor reports them.
CRI values are unsigned integers, so "seconds" series are whole seconds.

Descriptors exist for the blkio/fs I/O series too, but this host (overlayfs on a
virtual disk, cgroup v1 blkio without per-device accounting) gives no values for
them; critest lists them as optional for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import CriError
from cri_shim.services.container_stats import stats_of
from cri_shim.services.runtime_state import RuntimeState
from cri_shim.store.container import Container, ContainerState
from cri_shim.store.sandbox import Sandbox, SandboxState

if TYPE_CHECKING:
    from runtime.linux import metrics as linux_metrics

BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")
COUNTER, GAUGE = pb.COUNTER, pb.GAUGE


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    type: int
    extra_labels: tuple[str, ...] = ()


def _s(name: str, help_text: str, kind: int = GAUGE, extra: tuple[str, ...] = ()) -> Series:
    return Series(f"container_{name}", help_text, kind, extra)


NET = ("interface",)
DEV = ("device",)
SERIES = (
    _s("cpu_usage_seconds_total", "Cumulative CPU time consumed, in seconds.", COUNTER),
    _s("cpu_user_seconds_total", "Cumulative user CPU time consumed, in seconds.", COUNTER),
    _s("cpu_system_seconds_total", "Cumulative system CPU time consumed, in seconds.", COUNTER),
    _s("cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", COUNTER),
    _s("cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", COUNTER),
    _s("cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled, in seconds.",
       COUNTER),
    _s("memory_cache", "Number of bytes of page cache memory."),
    _s("memory_rss", "Size of RSS in bytes."),
    _s("memory_mapped_file", "Size of memory mapped files in bytes."),
    _s("memory_swap", "Container swap usage in bytes."),
    _s("memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was "
                             "accessed."),
    _s("memory_max_usage_bytes", "Maximum memory usage recorded in bytes."),
    _s("memory_working_set_bytes", "Current working set in bytes."),
    _s("memory_failcnt", "Number of memory usage hits limits.", COUNTER),
    _s("memory_kernel_usage", "Size of kernel memory allocated in bytes."),
    _s("memory_failures_total", "Cumulative count of memory allocation failures.", COUNTER,
       ("failure_type", "scope")),
    _s("oom_events_total", "Count of out of memory events observed for the container.", COUNTER),
    _s("processes", "Number of processes running inside the container."),
    _s("threads", "Number of threads running inside the container."),
    _s("threads_max", "Maximum number of threads allowed inside the container, 0 if unlimited."),
    _s("file_descriptors", "Number of open file descriptors for the container."),
    _s("sockets", "Number of open sockets for the container."),
    _s("spec_cpu_period", "CPU period of the container."),
    _s("spec_cpu_quota", "CPU quota of the container."),
    _s("spec_cpu_shares", "CPU share of the container."),
    _s("spec_memory_limit_bytes", "Memory limit for the container."),
    _s("spec_memory_swap_limit_bytes", "Memory swap limit for the container."),
    _s("start_time_seconds", "Start time of the container since unix epoch in seconds."),
    _s("last_seen", "Last time a container was seen by the exporter."),
    _s("fs_inodes_free", "Number of available Inodes.", GAUGE, DEV),
    _s("fs_inodes_total", "Number of Inodes.", GAUGE, DEV),
    _s("fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", GAUGE, DEV),
    _s("fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", GAUGE, DEV),
    _s("fs_reads_bytes_total", "Cumulative count of bytes read.", COUNTER, DEV),
    _s("fs_reads_total", "Cumulative count of reads completed.", COUNTER, DEV),
    _s("fs_writes_bytes_total", "Cumulative count of bytes written.", COUNTER, DEV),
    _s("fs_writes_total", "Cumulative count of writes completed.", COUNTER, DEV),
    _s("blkio_device_usage_total", "Blkio device bytes usage.", COUNTER, ("device", "major", "minor", "operation")),
    _s("network_receive_bytes_total", "Cumulative count of bytes received.", COUNTER, NET),
    _s("network_receive_packets_total", "Cumulative count of packets received.", COUNTER, NET),
    _s("network_receive_errors_total", "Cumulative count of errors encountered while receiving.", COUNTER, NET),
    _s("network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving.", COUNTER,
       NET),
    _s("network_transmit_bytes_total", "Cumulative count of bytes transmitted.", COUNTER, NET),
    _s("network_transmit_packets_total", "Cumulative count of packets transmitted.", COUNTER, NET),
    _s("network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.", COUNTER, NET),
    _s("network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting.",
       COUNTER, NET),
)
BY_NAME = {s.name: s for s in SERIES}
FS_SERIES = ("fs_inodes_free", "fs_inodes_total", "fs_limit_bytes", "fs_usage_bytes")


def list_metric_descriptors(request: pb.ListMetricDescriptorsRequest) -> pb.ListMetricDescriptorsResponse:
    return pb.ListMetricDescriptorsResponse(descriptors=[
        pb.MetricDescriptor(name=s.name, help=s.help, label_keys=[*BASE_LABELS, *s.extra_labels]) for s in SERIES])


def _metric(name: str, ts: int, base: list[str], value: int, extra: tuple[str, ...] = ()) -> pb.Metric:
    series = BY_NAME[f"container_{name}"]
    return pb.Metric(name=series.name, timestamp=ts, metric_type=series.type,  # type: ignore[arg-type]
                     label_values=[*base, *extra], value=pb.UInt64Value(value=max(0, value)))


def _cgroups_path(c: Container) -> str:
    path = c.extra.get("cgroups_path")
    if path:
        return str(path)
    with contextlib.suppress(OSError, ValueError, KeyError):   # KeyError: a Windows container has no cgroup
        return str(json.loads((Path(c.bundle_dir) / "config.json").read_text())["linux"]["cgroupsPath"])
    return ""


def _base_labels(sb: Sandbox, c: Container | None) -> list[str]:
    meta = sb.config.metadata
    if c is None:
        return ["POD", sb.id, "", sb.name, meta.namespace, meta.name]
    return [c.config.metadata.name, c.id, c.image_name, c.name, meta.namespace, meta.name]


def _container_metrics(c: Container, sb: Sandbox, sample: linux_metrics.ContainerSample,
                       fs_usage: int | None) -> pb.ContainerMetrics:
    ts, base = sample.timestamp_ns, _base_labels(sb, c)
    out = [_metric(name, ts, base, value) for name, value in sample.values.items() if not name.startswith("fs_")]
    out += [_metric("memory_failures_total", ts, base, n, key) for key, n in sample.memory_failures.items()]
    if c.started_at:
        out.append(_metric("start_time_seconds", ts, base, c.started_at // 1_000_000_000))
    out.append(_metric("last_seen", ts, base, ts // 1_000_000_000))
    if sample.fs_device:
        fs_values = {k: v for k, v in sample.values.items() if k.startswith("fs_")}
        if fs_usage is not None:
            fs_values["fs_usage_bytes"] = fs_usage
        out += [_metric(k, ts, base, v, (sample.fs_device,)) for k, v in fs_values.items()]
    return pb.ContainerMetrics(container_id=c.id, metrics=out)


def _pod_metrics(sb: Sandbox, sample: linux_metrics.ContainerSample) -> list[pb.Metric]:
    base = _base_labels(sb, None)
    return [_metric(f"network_{field}_total", sample.timestamp_ns, base, value, (iface,))
            for iface, counters in sample.interfaces.items() for field, value in counters.items()]


async def _sample(state: RuntimeState, c: Container) -> tuple[linux_metrics.ContainerSample, int | None] | None:
    path = _cgroups_path(c)
    if not path:
        return None
    from runtime.linux import metrics as linux_metrics   # cgroup paths exist only on Linux nodes
    upper = str(state.container_dir(c.id) / "scratch" / "upper")
    sample = await asyncio.to_thread(linux_metrics.sample_container, path, upper)
    usage = None
    with contextlib.suppress(CriError):
        stats = await stats_of(state, c)
        usage = stats.writable_layer.used_bytes.value if stats.writable_layer.HasField("used_bytes") else None
    return sample, usage


async def pod_metrics(state: RuntimeState, sb: Sandbox) -> pb.PodSandboxMetrics:
    out = pb.PodSandboxMetrics(pod_sandbox_id=sb.id)
    running = sorted((c for c in state.containers_of(sb.id) if c.state is ContainerState.RUNNING),
                     key=lambda c: c.created_at)
    samples = await asyncio.gather(*(_sample(state, c) for c in running))
    network_done = False
    for c, got in zip(running, samples):
        if got is None:
            continue
        sample, usage = got
        out.container_metrics.append(_container_metrics(c, sb, sample, usage))
        if not network_done and sample.interfaces:
            out.metrics.extend(_pod_metrics(sb, sample))
            network_done = True
    return out


async def list_pod_sandbox_metrics(state: RuntimeState, request: pb.ListPodSandboxMetricsRequest
                                   ) -> pb.ListPodSandboxMetricsResponse:
    ready = sorted(state.sandboxes.matching(lambda sb: sb.state is SandboxState.READY), key=lambda sb: sb.created_at)
    return pb.ListPodSandboxMetricsResponse(pod_metrics=await asyncio.gather(*(pod_metrics(state, sb) for sb in ready)))
