"""ImageService against a real registry (Debian's docker-registry) and a real daemon, through gRPC and crictl."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import stop_and_clean
from tests.harness import imagebuild as ib
from tests.harness.daemon import Daemon, make_workdir, new_daemon
from tests.harness.registry import LocalRegistry, start_registry
from tests.integration.images_env import listed, mirror_all, pull, remove, rpc_error, small_image, status, store_files


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def hosts_dir(registry: LocalRegistry) -> Iterator[Path]:
    path = make_workdir("hosts")
    mirror_all(path, registry.host)
    # The registry under its own name, over plain http: configured as insecure.
    (path / registry.host).mkdir()
    (path / registry.host / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(hosts_dir: Path) -> Iterator[Daemon]:
    d = new_daemon({"registry": {"config_path": str(hosts_dir)},
                    "images": {"pinned_images": ["registry.k8s.io/pause:3.9"]}}).start()
    yield d
    stop_and_clean(d)


def push(registry: LocalRegistry, image: ib.Image, repo: str, tag: str) -> str:
    return ib.push(image, registry.host, repo, tag)


def test_pull_through_mirror_keeps_the_original_name(registry: LocalRegistry, daemon: Daemon) -> None:
    image = small_image("busybox-look-alike")
    digest = push(registry, ib.build_index([image]), "e2e-test-images/busybox", "1.29-2")
    c = daemon.client()
    ref = pull(c, "registry.k8s.io/e2e-test-images/busybox:1.29-2")
    assert ref == image.config_digest
    st = status(c, ref)
    assert st is not None
    assert list(st.repo_tags) == ["registry.k8s.io/e2e-test-images/busybox:1.29-2"]
    assert list(st.repo_digests) == [f"registry.k8s.io/e2e-test-images/busybox@{digest}"]
    assert st.size > 0
    # ImageStatus by id, tag, digest and short id: the identical message
    for name in (ref, st.repo_tags[0], st.repo_digests[0], ref.removeprefix("sha256:")[:12]):
        assert status(c, name) == st, name
    remove(c, ref)
    assert status(c, ref) is None
    assert store_files(daemon) == ([], [])


def test_crictl_pull_images_inspecti_imagefsinfo_rmi(registry: LocalRegistry, daemon: Daemon) -> None:
    image = small_image("crictl", extra=[ib.file("big", os.urandom(1 << 20))])
    push(registry, image, "k8s-staging-cri-tools/test-image-latest", "latest")

    def fs_used() -> int:
        out = json.loads(daemon.crictl("imagefsinfo").stdout)["status"]["imageFilesystems"][0]
        return int(out["usedBytes"]["value"])

    before = fs_used()
    out = daemon.crictl("pull", "gcr.io/k8s-staging-cri-tools/test-image-latest").stdout
    assert image.config_digest in out
    assert fs_used() >= before + 2 * (1 << 20)  # compressed blob + unpacked file, both real
    images = daemon.crictl("images").stdout
    assert "gcr.io/k8s-staging-cri-tools/test-image-latest" in images and "latest" in images
    inspect = json.loads(daemon.crictl("inspecti", "gcr.io/k8s-staging-cri-tools/test-image-latest").stdout)
    assert inspect["status"]["id"] == image.config_digest
    info = inspect.get("info", inspect)  # crictl merges the verbose info JSON into its output
    assert info["imageSpec"]["config"]["Cmd"] == ["/bin/true"] and len(info["layers"]) == 2
    assert "Deleted" in daemon.crictl("rmi", "gcr.io/k8s-staging-cri-tools/test-image-latest").stdout
    assert "test-image-latest" not in daemon.crictl("images").stdout
    assert fs_used() <= before


def test_same_content_under_two_registries_is_one_image(registry: LocalRegistry, daemon: Daemon) -> None:
    pause = ib.build_index([small_image("pause")])
    push(registry, pause, "pause", "3.9")  # registry.k8s.io/pause and k8s.gcr.io/pause both map here
    c = daemon.client()
    first = pull(c, "registry.k8s.io/pause:3.9")
    second = pull(c, "k8s.gcr.io/pause:3.9")
    assert first == second
    st = status(c, first)
    assert st is not None and sorted(st.repo_tags) == ["k8s.gcr.io/pause:3.9", "registry.k8s.io/pause:3.9"]
    assert st.pinned  # [images] pinned_images names registry.k8s.io/pause:3.9
    assert [i.id for i in listed(c)].count(first) == 1
    remove(c, "registry.k8s.io/pause:3.9")  # one name removes the image and every name
    assert status(c, "k8s.gcr.io/pause:3.9") is None and status(c, first) is None
    assert first not in [i.id for i in listed(c)]


def test_three_tags_one_image_and_removal_by_one_tag(registry: LocalRegistry, daemon: Daemon) -> None:
    image = small_image("tags")
    for tag in ("1", "2", "3"):
        push(registry, image, "k8s-staging-cri-tools/test-image-tags", tag)
    c = daemon.client()
    ids = {pull(c, f"gcr.io/k8s-staging-cri-tools/test-image-tags:{t}") for t in ("1", "2", "3")}
    assert len(ids) == 1
    st = status(c, ids.pop())
    assert st is not None and len(st.repo_tags) == 3
    remove(c, "gcr.io/k8s-staging-cri-tools/test-image-tags:1")
    for t in ("1", "2", "3"):
        assert status(c, f"gcr.io/k8s-staging-cri-tools/test-image-tags:{t}") is None
    remove(c, "gcr.io/k8s-staging-cri-tools/test-image-tags:1")  # idempotent


@pytest.mark.parametrize("user, uid, username", [
    ("1002", 1002, ""), ("www-data", None, "www-data"), ("1003:1004", 1003, ""), ("www-data:1004", None, "www-data"),
])
def test_image_user_is_reported(registry: LocalRegistry, daemon: Daemon, user: str, uid: int | None,
                                username: str) -> None:
    repo = "k8s-staging-cri-tools/test-image-user-" + user.replace(":", "-")
    push(registry, small_image(f"user {user}", user=user), repo, "latest")
    c = daemon.client()
    ref = pull(c, f"gcr.io/{repo}")
    st = status(c, ref)
    assert st is not None
    assert (st.uid.value if st.HasField("uid") else None) == uid
    assert st.username == username
    remove(c, ref)


def test_multi_arch_index_and_docker_list_pick_this_platform(registry: LocalRegistry, daemon: Daemon) -> None:
    amd64 = small_image("multi", platform=ib.Platform("linux", "amd64"))
    arm64 = small_image("multi", platform=ib.Platform("linux", "arm64", "v8"))
    push(registry, ib.build_index([arm64, amd64]), "multi/oci", "v1")
    push(registry, ib.build_index([arm64, amd64], docker=True), "multi/docker", "v1")
    c = daemon.client()
    assert pull(c, f"{registry.host}/multi/oci:v1") == amd64.config_digest
    assert pull(c, f"{registry.host}/multi/docker:v1") == amd64.config_digest
    # a docker schema2 single manifest, no index
    docker = ib.build_image(ib.ImageSpec(layers=(ib.Layer(ib.tree([ib.file("d", b"docker")])),)), docker=True)
    push(registry, docker, "multi/schema2", "v1")
    assert pull(c, f"{registry.host}/multi/schema2:v1") == docker.config_digest
    # an index without this platform: NotFound listing what it has
    push(registry, ib.build_index([arm64]), "multi/armonly", "v1")
    err = rpc_error(pull, c, f"{registry.host}/multi/armonly:v1")
    assert err.code() == grpc.StatusCode.NOT_FOUND and "linux/arm64/v8" in err.details()
    for name in (f"{registry.host}/multi/oci:v1", f"{registry.host}/multi/schema2:v1"):
        remove(c, name)
    assert store_files(daemon) == ([], [])


def test_layers_unpack_as_overlay_lowerdirs(registry: LocalRegistry, daemon: Daemon) -> None:
    layers = (
        ib.Layer(ib.tree([ib.file("etc/a", b"a"), ib.file("etc/b", b"b"), ib.file("opt/keep/x", b"x")]),
                 compression=ib.Compression.NONE),
        ib.Layer(ib.tree([ib.whiteout("etc/a"), ib.opaque("opt/keep"), ib.file("opt/keep/y", b"y"),
                          ib.file("bin/su", b"setuid", mode=0o4755)]), compression=ib.Compression.ZSTD),
    )
    image = ib.build_image(ib.ImageSpec(layers=layers))
    push(registry, image, "layers/whiteouts", "v1")
    c = daemon.client()
    ref = pull(c, f"{registry.host}/layers/whiteouts:v1")
    snaps = sorted((daemon.root / "snapshots").iterdir())
    assert len(snaps) == 2
    top = next(s for s in snaps if (s / "bin").exists())
    whiteout = os.lstat(top / "etc" / "a")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(top / "opt" / "keep", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.stat(top / "bin" / "su").st_mode) == 0o4755
    remove(c, ref)


def test_windows_image_is_stored_but_not_unpacked(registry: LocalRegistry, daemon: Daemon) -> None:
    win = small_image("windows", platform=ib.Platform("windows", "amd64"))
    push(registry, win, "windows/nanoserver", "ltsc2022")
    c = daemon.client()
    ref = pull(c, f"{registry.host}/windows/nanoserver:ltsc2022")
    assert ref == win.config_digest and status(c, ref) is not None
    blobs, snaps = store_files(daemon)
    assert len(blobs) == 4 and snaps == []  # manifest, config, two layers; nothing unpacked
    remove(c, ref)


def test_unknown_images_and_bad_references(registry: LocalRegistry, daemon: Daemon) -> None:
    c = daemon.client()
    err = rpc_error(pull, c, f"{registry.host}/no/such-image:v9")
    assert err.code() == grpc.StatusCode.NOT_FOUND and f"{registry.host}/no/such-image:v9" in err.details()
    # Not on the mirror, and the upstream is unreachable from here: the error tells both.
    err = rpc_error(pull, c, "registry.k8s.io/e2e-test-images/none:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "registry.k8s.io/e2e-test-images/none:1" in err.details()
    assert "https://registry.k8s.io: cannot resolve the host name" in err.details()
    assert f"http://{registry.host}: image registry.k8s.io/e2e-test-images/none:1: not found" in err.details()
    for bad in ("Upper/Case", "busybox:-x", "a b"):
        err = rpc_error(pull, c, bad)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert status(c, "registry.k8s.io/never-pulled:1") is None  # not an error
    assert status(c, "sha256:" + "0" * 64) is None
    remove(c, "sha256:" + "0" * 64)  # idempotent
    remove(c, "sha256:" + "0" * 64)
    err = rpc_error(pull, c, "sha256:" + "0" * 64)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "cannot be pulled" in err.details()
    assert store_files(daemon) == ([], [])


def test_a_1ms_deadline_is_deadline_exceeded_and_stores_nothing(registry: LocalRegistry, daemon: Daemon) -> None:
    push(registry, small_image("deadline", extra=[ib.file("big", os.urandom(4 << 20))]), "deadline/img", "v1")
    c = daemon.client()
    for timeout in (0.001, 0.001, 0.001, 0.002, 0.003, 0.004):  # before, at and after the handler starts
        err = rpc_error(pull, c, f"{registry.host}/deadline/img:v1", timeout=timeout)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status(c, f"{registry.host}/deadline/img:v1") is None
    daemon_settles(daemon)
    assert store_files(daemon) == ([], [])
    # and a normal pull afterwards works
    ref = pull(c, f"{registry.host}/deadline/img:v1")
    remove(c, ref)


def daemon_settles(d: Daemon, timeout: float = 10) -> None:
    """Wait until cancelled background work has cleaned up (nothing in flight in the stores)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blobs, snaps = store_files(d)
        if not blobs and not snaps:
            return
        time.sleep(0.1)


def test_concurrent_removal_of_one_image(registry: LocalRegistry, daemon: Daemon) -> None:
    push(registry, small_image("concurrent"), "concurrent/img", "v1")
    c = daemon.client()
    ref = pull(c, f"{registry.host}/concurrent/img:v1")
    results: list[object] = []

    def rm() -> None:
        try:
            remove(c, ref)
            results.append(status(c, ref))
        except grpc.RpcError as e:  # pragma: no cover - reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=rm) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [None] * 5
    assert store_files(daemon) == ([], [])


def test_images_survive_a_restart(registry: LocalRegistry, hosts_dir: Path) -> None:
    push(registry, small_image("restart"), "restart/img", "v1")
    d = new_daemon({"registry": {"config_path": str(hosts_dir)}}).start()
    try:
        c = d.client()
        ref = pull(c, f"{registry.host}/restart/img:v1")
        before = status(c, ref)
        # a second image whose snapshot is then lost (e.g. deleted by hand)
        push(registry, small_image("restart-broken"), "restart/broken", "v1")
        broken = pull(c, f"{registry.host}/restart/broken:v1")
        shared_base = {p.name for p in (d.root / "snapshots").iterdir()}
        # debris of a crash: a half-unpacked snapshot and a partial download
        (d.root / "snapshots" / ".tmp-crashed").mkdir()
        (d.root / "content" / "ingest" / "partial").write_bytes(b"x")
        d.stop()
        shutil.rmtree(d.root / "snapshots" / top_chain_id(d, broken).removeprefix("sha256:"))
        d.start()
        c = d.client()
        assert status(c, ref) == before
        assert status(c, broken) is None  # forgotten, so that pulling it again repairs it
        assert "is missing 1 blobs/snapshots on disk" in d.log_text()
        assert not (d.root / "snapshots" / ".tmp-crashed").exists()
        assert not (d.root / "content" / "ingest" / "partial").exists()
        assert len(shared_base) == 3  # two images sharing their base layer
        assert pull(c, f"{registry.host}/restart/broken:v1") == broken
        remove(c, ref)
        remove(c, broken)
    finally:
        stop_and_clean(d)


def top_chain_id(d: Daemon, image_id: str) -> str:
    """The chain id of the image's top layer, read from the metadata store of a stopped daemon."""
    import sqlite3
    with sqlite3.connect(d.root / "meta.db") as db:
        body = json.loads(db.execute("SELECT body FROM images WHERE id = ?", (image_id,)).fetchone()[0])
    return str(body["layers"][-1]["chain_id"])


def test_pull_by_digest_records_only_the_digest(registry: LocalRegistry, daemon: Daemon) -> None:
    image = small_image("by-digest")
    index = ib.build_index([image])
    push(registry, index, "k8s-staging-cri-tools/test-image-digest", "unused-tag")
    by_digest = f"gcr.io/k8s-staging-cri-tools/test-image-digest@{index.digest}"
    c = daemon.client()
    ref = pull(c, by_digest)
    st = status(c, by_digest)
    assert st is not None and st.id == ref == image.config_digest
    assert list(st.repo_tags) == [] and list(st.repo_digests) == [by_digest]
    # the platform manifest's own digest is a valid reference too, and adds a second repo digest
    manifest_ref = f"gcr.io/k8s-staging-cri-tools/test-image-digest@{image.digest}"
    assert pull(c, manifest_ref) == ref
    st = status(c, ref)
    assert st is not None and sorted(st.repo_digests) == sorted([by_digest, manifest_ref])
    # a digest the registry does not have
    missing = f"{registry.host}/k8s-staging-cri-tools/test-image-digest@sha256:" + "9" * 64
    err = rpc_error(pull, c, missing)
    assert err.code() == grpc.StatusCode.NOT_FOUND and missing in err.details()
    remove(c, by_digest)
    assert status(c, manifest_ref) is None
