"""Pushing built images to a real registry (Debian docker-registry) and reading them back with skopeo."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import imagebuild as ib
from tests.harness.daemon import make_workdir
from tests.integration.layers_registry import LocalRegistry, start_registry


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = make_workdir("ib")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def image(arch: str = "amd64", comp: ib.Compression = ib.Compression.GZIP, data: bytes = b"hello",
          docker: bool = False) -> ib.Image:
    layer = ib.Layer(ib.tree([ib.file("hello.txt", data), ib.symlink("link", "hello.txt")]), comp)
    return ib.build_image(ib.ImageSpec((layer,), ib.ImageConfig(
        cmd=("/hello",), platform=ib.Platform(architecture=arch))), docker=docker)


def get_manifest(reg: LocalRegistry, repo: str, ref: str, accept: str) -> tuple[str, bytes]:
    req = urllib.request.Request(f"http://{reg.host}/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Docker-Content-Digest"], r.read()


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True, timeout=120).stdout


def test_pushed_index_is_served_byte_identical_with_its_children(registry: LocalRegistry) -> None:
    idx = ib.build_index([image(), image("arm64", ib.Compression.ZSTD)])
    assert ib.push(idx, registry.host, "lay/multi", "v1") == idx.digest
    digest, body = get_manifest(registry, "lay/multi", "v1", ib.OCI_INDEX)
    assert digest == idx.digest and body == idx.top.data
    for entry in idx.manifest_json()["manifests"]:
        d, b = get_manifest(registry, "lay/multi", entry["digest"], ib.OCI_MANIFEST)
        assert d == entry["digest"]
    raw = skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64", f"docker://{registry.host}/lay/multi:v1")
    assert json.loads(raw)["Architecture"] == "arm64"


def test_chunked_docker_push_is_readable_by_skopeo(registry: LocalRegistry, workdir: Path) -> None:
    img = image(data=b"z" * 300_000, docker=True)
    ib.push(img, registry.host, "lay/docker", "v1", chunk_size=64 * 1024)
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/lay/docker:v1"))
    assert info["Digest"] == img.digest and info["Created"] == ib.DEFAULT_CREATED
    # skopeo verifies every blob digest while copying; the copy must be the same image.
    skopeo("copy", "--src-tls-verify=false", "--preserve-digests", f"docker://{registry.host}/lay/docker:v1",
           f"dir:{workdir / 'copy'}")
    assert (workdir / "copy/manifest.json").read_bytes() == img.top.data


def test_push_from_layout_and_by_digest(registry: LocalRegistry, workdir: Path) -> None:
    img = image(data=b"from layout")
    ib.write_layout(workdir / "layout", {"v2": img})
    ib.push(workdir / "layout", registry.host, "lay/layout", img.digest, layout_ref="v2")
    digest, _ = get_manifest(registry, "lay/layout", img.digest, ib.OCI_MANIFEST)
    assert digest == img.digest
    # skopeo reads our layout too: it is a valid OCI image layout.
    info = json.loads(skopeo("inspect", f"oci:{workdir / 'layout'}:v2"))
    assert info["Digest"] == img.digest


def test_push_of_a_missing_blob_reference_fails_with_the_registry_message(registry: LocalRegistry) -> None:
    img = image(data=b"broken")
    layer = next(b for b in img.blobs.values() if b.media_type.startswith(ib.OCI_LAYER))
    broken = ib.Image(img.top, {d: b for d, b in img.blobs.items() if d != layer.digest}, img.platform)
    with pytest.raises(KeyError):
        ib.push(broken, registry.host, "lay/broken", "v1")
    with pytest.raises(ib.PushError, match="HTTP 400"):
        ib._Registry(f"http://{registry.host}", "lay/broken", None).put_manifest(img.top, "v1")


def test_push_with_basic_auth_and_refusal_without_credentials() -> None:
    reg = start_registry(auth=("pusher", "s3cret-canary"))
    try:
        img = image(data=b"authenticated")
        with pytest.raises(ib.PushError, match="HTTP 401"):
            ib.push(img, reg.host, "lay/auth", "v1")
        with pytest.raises(ib.PushError, match="HTTP 401"):
            ib.push(img, reg.host, "lay/auth", "v1", auth=("pusher", "wrong"))
        assert ib.push(img, reg.host, "lay/auth", "v1", auth=("pusher", "s3cret-canary"), chunk_size=100) == img.digest
        info = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "pusher:s3cret-canary",
                                 f"docker://{reg.host}/lay/auth:v1"))
        assert info["Digest"] == img.digest
    finally:
        reg.stop()
