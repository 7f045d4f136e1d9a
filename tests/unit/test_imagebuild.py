"""The test image builder: deterministic bytes, the documents registries and runtimes read, OCI layouts."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.harness import imagebuild as ib

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # vfs_cap_data v2, not UTF-8


def sample_layer(compression: ib.Compression = ib.Compression.GZIP) -> ib.Layer:
    return ib.Layer(ib.tree([
        ib.file("bin/busybox", b"\x7fELF" + b"x" * 1000, mode=0o755),
        ib.hardlink("bin/sh", "bin/busybox"),
        ib.symlink("bin/ls", "busybox"),
        ib.file("usr/bin/su", b"su", mode=0o4755),
        ib.file("bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW}),
        ib.dir_("tmp", mode=0o1777),
        ib.chardev("dev/null", 1, 3),
        ib.fifo("run/fifo"),
        ib.whiteout("etc/removed"),
        ib.opaque("var/cache"),
        ib.file("home/user/" + "n" * 150, b"long name", uid=1000, gid=1000),
    ]), compression)


def sample_image(compression: ib.Compression = ib.Compression.GZIP, docker: bool = False) -> ib.Image:
    cfg = ib.ImageConfig(user="1002", entrypoint=("/bin/sh",), cmd=("-c", "true"), env=("A=1",),
                         working_dir="/tmp", stop_signal="SIGQUIT", volumes=("/data",))
    return ib.build_image(ib.ImageSpec((sample_layer(compression),), cfg), docker=docker)


def members(raw: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tf:
        return {m.name: m for m in tf}


def test_identical_inputs_give_identical_digests_for_every_format() -> None:
    for comp in ib.Compression:
        assert sample_image(comp).digest == sample_image(comp).digest
    assert sample_image(docker=True).digest == sample_image(docker=True).digest
    idx1 = ib.build_index([sample_image(), sample_image(ib.Compression.ZSTD)])
    idx2 = ib.build_index([sample_image(), sample_image(ib.Compression.ZSTD)])
    assert idx1.digest == idx2.digest


def test_different_content_gives_different_digests() -> None:
    a = ib.build_image(ib.ImageSpec((ib.Layer(ib.tree([ib.file("x", b"1")])),)))
    b = ib.build_image(ib.ImageSpec((ib.Layer(ib.tree([ib.file("x", b"2")])),)))
    assert a.digest != b.digest and a.config_digest != b.config_digest


def test_gzip_layer_has_mtime_zero_and_diff_id_of_the_raw_tar() -> None:
    blob, diff_id = ib.build_layer(sample_layer())
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert blob.data[4:8] == b"\0\0\0\0"  # gzip header MTIME field
    raw = gzip.decompress(blob.data)
    assert diff_id == ib.sha256_digest(raw)


def test_zstd_layer_is_a_zstd_frame() -> None:
    blob, _ = ib.build_layer(sample_layer(ib.Compression.ZSTD))
    assert blob.media_type.endswith("+zstd")
    assert blob.data[:4] == bytes.fromhex("28b52ffd")


def test_tar_keeps_modes_owners_links_devices_xattrs_and_whiteouts() -> None:
    m = members(ib.tar_bytes(sample_layer().entries))
    assert m["usr/bin/su"].mode == 0o4755
    assert m["tmp"].isdir() and m["tmp"].mode == 0o1777
    assert m["bin/sh"].islnk() and m["bin/sh"].linkname == "bin/busybox"
    assert m["bin/ls"].issym() and m["bin/ls"].linkname == "busybox"
    assert m["dev/null"].ischr() and (m["dev/null"].devmajor, m["dev/null"].devminor) == (1, 3)
    assert m["run/fifo"].isfifo()
    assert "etc/.wh.removed" in m and "var/cache/.wh..wh..opq" in m
    long = m["home/user/" + "n" * 150]
    assert (long.uid, long.gid) == (1000, 1000)
    cap = m["bin/ping"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAP_NET_RAW
    assert all(x.mtime == ib.DEFAULT_MTIME for x in m.values())
    # tree() supplied the missing parents, parents first
    names = list(m)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/su")
    assert names.index("bin/sh") == names.index("bin/busybox") + 1  # a hardlink right after its target


def test_config_and_manifest_documents() -> None:
    img = sample_image()
    man = img.manifest_json()
    assert man["mediaType"] == ib.OCI_MANIFEST and man["schemaVersion"] == 2
    cfg = json.loads(img.config_blob().data)
    assert cfg["os"] == "linux" and cfg["architecture"] == "amd64"
    assert cfg["config"] == {"User": "1002", "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["A=1"],
                             "WorkingDir": "/tmp", "StopSignal": "SIGQUIT", "Volumes": {"/data": {}}}
    layer = man["layers"][0]
    assert cfg["rootfs"]["diff_ids"] == [ib.build_layer(sample_layer())[1]]
    assert img.blobs[layer["digest"]].size == layer["size"]


def test_docker_schema2_variant_uses_docker_media_types_and_refuses_zstd() -> None:
    img = sample_image(docker=True)
    man = img.manifest_json()
    assert man["mediaType"] == ib.DOCKER_MANIFEST
    assert man["config"]["mediaType"] == ib.DOCKER_CONFIG
    assert man["layers"][0]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    lst = ib.build_index([img], docker=True)
    assert lst.media_type == ib.DOCKER_LIST
    with pytest.raises(ValueError, match="gzip or uncompressed"):
        sample_image(ib.Compression.ZSTD, docker=True)


def test_multi_arch_index_lists_each_platform() -> None:
    arm = ib.build_image(ib.ImageSpec((sample_layer(),), ib.ImageConfig(
        platform=ib.Platform(architecture="arm64", variant="v8"))))
    idx = ib.build_index([sample_image(), arm])
    doc = idx.manifest_json()
    assert [m["platform"] for m in doc["manifests"]] == [
        {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"}]
    arm_cfg = json.loads(idx.config_blob(ib.Platform(architecture="arm64", variant="v8")).data)
    assert arm_cfg["architecture"] == "arm64" and arm_cfg["variant"] == "v8"
    with pytest.raises(ValueError):
        ib.build_index([idx])


def test_layout_round_trips(tmp_path: Path) -> None:
    idx = ib.build_index([sample_image()])
    ib.write_layout(tmp_path, {"v1": idx, "docker": sample_image(docker=True)})
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    back = ib.read_layout(tmp_path, "v1")
    assert back.digest == idx.digest and set(back.blobs) == set(idx.blobs)
    for d, blob in idx.blobs.items():
        assert ib.sha256_digest((tmp_path / "blobs/sha256" / d.split(":")[1]).read_bytes()) == d == blob.digest
    with pytest.raises(KeyError):
        ib.read_layout(tmp_path, "nope")


def test_hardlink_header_mode_defaults_to_0644_and_can_be_given() -> None:
    assert ib.hardlink("bin/ls", "bin/busybox").tarinfo().mode == 0o644
    assert ib.hardlink("bin/ls", "bin/busybox", mode=0o755).tarinfo().mode == 0o755
