"""RuntimeService servicer: unpack the request, call the service module, return.

No logic lives here; error mapping, logging and metrics are the interceptor's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.server.context import DaemonContext
from cri_shim.server.unimplemented import fill_unimplemented
from cri_shim.services import (container_attach, container_create, container_events, container_exec,
                               container_execsync, container_list, container_log_reopen, container_remove,
                               container_start, container_stats, container_status, container_stop, container_update,
                               runtime_config, sandbox_list, sandbox_metrics, sandbox_portforward, sandbox_remove,
                               sandbox_run, sandbox_stats, sandbox_status, sandbox_stop, sandbox_update, status,
                               version)

Ctx: TypeAlias = grpc.aio.ServicerContext


class RuntimeService:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.state = ctx.lifecycle

    async def Version(self, request: pb.VersionRequest, context: Ctx) -> pb.VersionResponse:
        return version.version(request)

    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        ctx = self.ctx
        return status.status(ctx.config, ctx.host, ctx.store, ctx.handlers, self.state.network, request,
                             supplemental_groups_policy=ctx.supplemental_groups_policy)

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: Ctx) -> pb.RuntimeConfigResponse:
        return runtime_config.runtime_config(self.ctx.config)

    async def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                                  context: Ctx) -> pb.UpdateRuntimeConfigResponse:
        runtime_config.update_runtime_config(self.ctx.store, request)
        return pb.UpdateRuntimeConfigResponse()

    # ------------------------------------------------------------ sandboxes

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Ctx) -> pb.RunPodSandboxResponse:
        return await sandbox_run.run_pod_sandbox(self.state, request)

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Ctx) -> pb.StopPodSandboxResponse:
        return await sandbox_stop.stop_pod_sandbox(self.state, request)

    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                               context: Ctx) -> pb.RemovePodSandboxResponse:
        return await sandbox_remove.remove_pod_sandbox(self.state, request)

    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                               context: Ctx) -> pb.PodSandboxStatusResponse:
        return sandbox_status.pod_sandbox_status(self.state, request)

    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Ctx) -> pb.ListPodSandboxResponse:
        return sandbox_list.list_pod_sandbox(self.state.sandboxes, request, self.state.sandbox_items)

    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: Ctx) -> pb.PodSandboxStatsResponse:
        return await sandbox_stats.pod_sandbox_stats(self.state, request)

    async def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                                  context: Ctx) -> pb.ListPodSandboxStatsResponse:
        return await sandbox_stats.list_pod_sandbox_stats(self.state, request)

    async def UpdatePodSandboxResources(self, request: pb.UpdatePodSandboxResourcesRequest,
                                        context: Ctx) -> pb.UpdatePodSandboxResourcesResponse:
        return await sandbox_update.update_pod_sandbox_resources(self.state, request)

    async def ListMetricDescriptors(self, request: pb.ListMetricDescriptorsRequest,
                                    context: Ctx) -> pb.ListMetricDescriptorsResponse:
        return sandbox_metrics.list_metric_descriptors(request)

    async def ListPodSandboxMetrics(self, request: pb.ListPodSandboxMetricsRequest,
                                    context: Ctx) -> pb.ListPodSandboxMetricsResponse:
        return await sandbox_metrics.list_pod_sandbox_metrics(self.state, request)

    async def PortForward(self, request: pb.PortForwardRequest, context: Ctx) -> pb.PortForwardResponse:
        return await sandbox_portforward.portforward_url(self.state, request)

    # ------------------------------------------------------------ containers

    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Ctx) -> pb.CreateContainerResponse:
        return await container_create.create_container(self.state, request)

    async def StartContainer(self, request: pb.StartContainerRequest, context: Ctx) -> pb.StartContainerResponse:
        return await container_start.start_container(self.state, request)

    async def StopContainer(self, request: pb.StopContainerRequest, context: Ctx) -> pb.StopContainerResponse:
        return await container_stop.stop_container(self.state, request)

    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Ctx) -> pb.RemoveContainerResponse:
        return await container_remove.remove_container(self.state, request)

    async def ListContainers(self, request: pb.ListContainersRequest, context: Ctx) -> pb.ListContainersResponse:
        return container_list.list_containers(self.state.containers, request, self.state.container_items)

    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Ctx) -> pb.ContainerStatusResponse:
        return container_status.container_status(self.state, request)

    async def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                       context: Ctx) -> pb.UpdateContainerResourcesResponse:
        return await container_update.update_container_resources(self.state, request)

    async def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                                 context: Ctx) -> pb.ReopenContainerLogResponse:
        return await container_log_reopen.reopen_container_log(self.state, request)

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Ctx) -> pb.ExecSyncResponse:
        return await container_execsync.exec_sync(self.state, request)

    async def Exec(self, request: pb.ExecRequest, context: Ctx) -> pb.ExecResponse:
        return await container_exec.exec_url(self.state, request)

    async def Attach(self, request: pb.AttachRequest, context: Ctx) -> pb.AttachResponse:
        return await container_attach.attach_url(self.state, request)

    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Ctx) -> pb.ContainerStatsResponse:
        return await container_stats.container_stats(self.state, request)

    async def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                                 context: Ctx) -> pb.ListContainerStatsResponse:
        return await container_stats.list_container_stats(self.state, request)

    def GetContainerEvents(self, request: pb.GetEventsRequest, context: Ctx) -> AsyncIterator[pb.ContainerEventResponse]:
        return container_events.get_container_events(self.state, request)


UNIMPLEMENTED = fill_unimplemented(RuntimeService, pb.DESCRIPTOR.services_by_name["RuntimeService"])
