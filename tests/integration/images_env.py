"""Shared pieces of the image tests: small images built with tests/harness/imagebuild, mirrors, gRPC calls."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc

from cri_shim.api import api_pb2 as pb
from tests.harness import imagebuild as ib
from tests.harness.daemon import CriClient, Daemon

MIRRORED = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")


def small_image(label: str, *, user: str = "", compression: ib.Compression = ib.Compression.GZIP,
                extra: Iterable[ib.Entry] = (), platform: ib.Platform = ib.Platform()) -> ib.Image:
    """A two-layer image whose content (and so id) depends on `label`."""
    base = ib.Layer(ib.tree([ib.file("bin/true", b"#!/bin/sh\n", mode=0o755),
                             ib.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
                             ib.dir_("tmp", mode=0o1777)]), compression=compression)
    top = ib.Layer(ib.tree([ib.file("label", label.encode()), *extra]), compression=compression)
    return ib.build_image(ib.ImageSpec(layers=(base, top), config=ib.ImageConfig(
        user=user, cmd=("/bin/true",), platform=platform)))


def write_hosts(config_path: Path, registry: str, body: str) -> None:
    (config_path / registry).mkdir(parents=True, exist_ok=True)
    (config_path / registry / "hosts.toml").write_text(body)


def mirror_all(config_path: Path, mirror_host: str, registries: Iterable[str] = MIRRORED) -> None:
    """Each registry name served by the local registry (plain http), names kept."""
    for name in registries:
        write_hosts(config_path, name, f'server = "https://{name}"\n[host."http://{mirror_host}"]\n'
                                       'capabilities = ["pull", "resolve"]\n')


def pull(client: CriClient, image: str, timeout: float = 60, auth: pb.AuthConfig | None = None) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
    if auth is not None:
        request.auth.CopyFrom(auth)
    return str(client.image.PullImage(request, timeout=timeout).image_ref)


def status(client: CriClient, image: str) -> pb.Image | None:
    resp = client.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=10)
    return resp.image if resp.HasField("image") else None


def remove(client: CriClient, image: str) -> None:
    client.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=30)


def listed(client: CriClient) -> list[pb.Image]:
    return list(client.image.ListImages(pb.ListImagesRequest(), timeout=10).images)


def rpc_error(fn: object, *args: object, **kwargs: object) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


def store_files(d: Daemon) -> tuple[list[str], list[str]]:
    """What is on disk in the content store and the snapshot store (temp dirs included)."""
    blobs = sorted(p.name for p in (d.root / "content" / "sha256").iterdir())
    ingest = sorted(p.name for p in (d.root / "content" / "ingest").iterdir())
    snaps = sorted(p.name for p in (d.root / "snapshots").iterdir())
    return blobs + ingest, snaps
