"""The API the container lifecycle uses (ImageStore.use/layers/add_user/remove_user), in process, as root.

An image a container uses must stay on disk after RemoveImage until the
container is gone; layer directories come lowest first and are real overlay
lowerdirs (checked by mounting them).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim import config as config_mod
from cri_shim.errors import NotFound
from cri_shim.images import store as image_store
from cri_shim.images.store import ImageStore
from cri_shim.store.db import MetadataStore
from cri_shim.types import ImageId
from tests.harness import imagebuild as ib
from tests.harness.daemon import make_workdir, toml
from tests.harness.registry import LocalRegistry, start_registry
from tests.integration.images_env import write_hosts


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture
def store(registry: LocalRegistry) -> Iterator[ImageStore]:
    work = make_workdir("store")
    write_hosts(work / "hosts", registry.host, f'server = "http://{registry.host}"\n')
    cfg_file = work / "config.toml"
    cfg_file.write_text(toml({"server": {"root": str(work / "root"), "state": str(work / "state")},
                              "registry": {"config_path": str(work / "hosts")}}))
    cfg = config_mod.load(cfg_file)
    (work / "root").mkdir()
    db = MetadataStore.open(work / "root" / "meta.db")
    s = image_store.build(cfg, db)
    yield s
    s.close()
    db.close()
    shutil.rmtree(work, ignore_errors=True)


def build(label: str) -> ib.Image:
    return ib.build_image(ib.ImageSpec(
        layers=(ib.Layer(ib.tree([ib.file("etc/os", b"base"), ib.file("etc/gone", b"x")])),
                ib.Layer(ib.tree([ib.whiteout("etc/gone"), ib.file("app", label.encode())]))),
        config=ib.ImageConfig(entrypoint=("/app",), cmd=("--flag",), env=("A=1",), working_dir="/srv",
                              user="1000", stop_signal="SIGQUIT", volumes=("/data",))))


def test_use_gives_config_and_lowerdirs_lowest_first(registry: LocalRegistry, store: ImageStore,
                                                      tmp_path: Path) -> None:
    image = build("v1")
    ib.push(image, registry.host, "api/app", "v1")
    image_id = asyncio.run(store.pull(f"{registry.host}/api/app:v1", None, 30))
    used = store.use(f"{registry.host}/api/app:v1", "c1")
    assert used.id == image_id == image.config_digest
    assert used.repo_tag == f"{registry.host}/api/app:v1"
    assert used.repo_digest.startswith(f"{registry.host}/api/app@sha256:")
    c = used.config
    assert (c.entrypoint, c.cmd, c.env, c.working_dir, c.user, c.stop_signal, c.volumes, c.os) == (
        ("/app",), ("--flag",), ("A=1",), "/srv", "1000", "SIGQUIT", ("/data",), "linux")
    assert store.layers(image_id) == used.layers and len(used.layers) == 2
    # mount them the way the runtime will: overlay lowerdir lists the top layer first
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for p in (upper, work, merged):
        p.mkdir()
    lower = ":".join(reversed(used.layers))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        assert (merged / "etc" / "os").read_bytes() == b"base"
        assert (merged / "app").read_bytes() == b"v1"
        assert not (merged / "etc" / "gone").exists()  # the whiteout hides the lower file
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    store.remove_user("c1")


def test_an_image_in_use_stays_on_disk_until_its_container_is_removed(registry: LocalRegistry,
                                                                       store: ImageStore) -> None:
    image = build("in-use")
    ib.push(image, registry.host, "api/inuse", "v1")
    image_id = asyncio.run(store.pull(f"{registry.host}/api/inuse:v1", None, 30))
    used = store.use(image_id, "container-1")
    assert store.remove(image_id)
    assert store.find(image_id) is None                      # gone for ImageStatus/ListImages
    assert all(Path(p).is_dir() for p in used.layers)        # but not from the disk
    store.remove_user("container-1")
    assert not any(Path(p).exists() for p in used.layers)
    assert store.content.digests() == set()


def test_use_of_a_missing_image_is_not_found(store: ImageStore) -> None:
    with pytest.raises(NotFound, match="pull it first"):
        store.use("registry.example/none:1", "c")
    with pytest.raises(NotFound):
        store.layers(ImageId("sha256:" + "0" * 64))
    with pytest.raises(NotFound):
        store.add_user(ImageId("sha256:" + "0" * 64), "c")
    store.remove_user("never-added")  # idempotent
