"""ListContainers: answered from the in-memory index only (kubelet calls it every second)."""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.services.list_cache import ConvertedCache
from cri_shim.store.container import CRI_STATE, Container, ContainerState
from cri_shim.store.records import RecordStore, labels_match


def visible(c: Container) -> bool:
    return c.state is not ContainerState.CREATING


def to_container(c: Container) -> pb.Container:
    return pb.Container(id=c.id, pod_sandbox_id=c.sandbox_id, metadata=c.config.metadata,
                        image=pb.ImageSpec(image=c.image_name, annotations=c.config.image.annotations,
                                           user_specified_image=c.config.image.user_specified_image),
                        image_ref=c.image_ref, state=CRI_STATE[c.state], created_at=c.created_at,
                        labels=c.config.labels, annotations=c.config.annotations, image_id=c.image_id)


def matches(c: Container, f: pb.ContainerFilter) -> bool:
    if f.id and not c.id.startswith(f.id):
        return False
    if f.pod_sandbox_id and not c.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    if f.HasField("state") and CRI_STATE[c.state] != f.state.state:
        return False
    return labels_match(dict(c.config.labels), f.label_selector)


def list_containers(containers: RecordStore[Container], request: pb.ListContainersRequest,
                    cache: ConvertedCache[Container, pb.Container] | None = None) -> pb.ListContainersResponse:
    convert = cache.get if cache is not None else to_container
    chosen = sorted((c for c in containers.matching(visible) if matches(c, request.filter)),
                    key=lambda c: c.created_at)
    response = pb.ListContainersResponse(containers=[convert(c) for c in chosen])
    if cache is not None:
        cache.prune({c.id for c in containers.values()})
    return response
