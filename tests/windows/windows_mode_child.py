"""The child of test_windows_startup.py: a Windows-mode daemon with the POSIX-only modules blocked.

Run through tests.harness.not_windows.run_module (never collected by pytest).
argv: config.toml, the gRPC port, a windows/amd64 image reference. Prints one
JSON line: what the CRI calls returned and every import the blocker refused.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc

from cri_shim import config as C
from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc
from cri_shim.app import Daemon
from tests.harness.not_windows import blocked_attempts


async def wait_serving(stub: Any, task: asyncio.Task[None]) -> None:
    for _ in range(200):
        if task.done():
            task.result()
        try:
            await stub.Version(pb.VersionRequest(), timeout=1)
            return
        except grpc.RpcError:
            await asyncio.sleep(0.05)
    raise AssertionError("the Windows-mode daemon did not serve on TCP")


async def drive(config: Path, port: int, image: str) -> dict[str, Any]:
    daemon = Daemon(C.load(config), windows_host=True)
    task = asyncio.ensure_future(daemon.run())
    out: dict[str, Any] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            rt = pb_grpc.RuntimeServiceStub(channel)   # type: ignore[no-untyped-call]
            img = pb_grpc.ImageServiceStub(channel)   # type: ignore[no-untyped-call]
            await wait_serving(rt, task)
            status = await rt.Status(pb.StatusRequest(verbose=True), timeout=10)
            out["handlers"] = sorted(h.name for h in status.runtime_handlers)
            out["runtime_ready"] = [c.status for c in status.status.conditions if c.type == "RuntimeReady"]
            out["network"] = [(c.status, c.message) for c in status.status.conditions if c.type == "NetworkReady"]
            pod_config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="hpc", namespace="w", uid="u"))
            pod_config.windows.security_context.host_process = True
            pod = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config), timeout=30)).pod_sandbox_id
            out["pod_state"] = (await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod),
                                                          timeout=10)).status.state
            # RPCs whose Linux paths read cgroups, /proc or the host: on Windows they must take none of them
            await rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=10)
            await rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=10)
            await rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=10)
            await rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10)
            await rt.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10)
            out["imagefs"] = len((await img.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10)).image_filesystems)
            pulled = await img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
            out["image_ref"] = pulled.image_ref
            found = await img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=10)
            out["image_size"] = found.image.size
            await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
            await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
            out["pods_left"] = len((await rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10)).items)
    finally:
        daemon.request_stop()
        await task
    out["blocked"] = blocked_attempts()
    out["linux_modules"] = sorted(m for m in sys.modules if m.startswith("runtime.linux"))
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(drive(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))))
