"""Manifests, indexes and configs from registries: parsed strictly, platforms chosen, users read."""

from __future__ import annotations

import json

import pytest

from cri_shim.errors import FailedPrecondition, NotFound
from cri_shim.images import manifest, platform
from cri_shim.images.manifest import Descriptor, Platform
from cri_shim.images.snapshots import chain_ids
from cri_shim.images.store import user_of

D = "sha256:" + "1" * 64
E = "sha256:" + "2" * 64


def doc(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def layer(media: str = "application/vnd.oci.image.layer.v1.tar+gzip", digest: str = E) -> dict[str, object]:
    return {"mediaType": media, "digest": digest, "size": 10}


def test_manifest_with_supported_layers_parses() -> None:
    m = manifest.parse_manifest(doc(schemaVersion=2, mediaType=manifest.OCI_MANIFEST,
                                    config={"mediaType": manifest.OCI_CONFIG, "digest": D, "size": 5},
                                    layers=[layer(), layer("application/vnd.oci.image.layer.v1.tar+zstd"),
                                            layer("application/vnd.docker.image.rootfs.diff.tar.gzip")]), "m")
    assert [manifest.layer_compression(x).value for x in m.layers] == ["gzip", "zstd", "gzip"]
    assert m.config.digest == D


@pytest.mark.parametrize("body, fragment", [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (doc(config={"digest": D, "size": 5}), "'layers' must be a list"),
    (doc(config={"digest": "sha256:xyz", "size": 5}, layers=[]), "64 lowercase hex"),
    (doc(config={"digest": D, "size": -1}, layers=[]), "no valid 'size'"),
    (doc(config={"digest": D, "size": 5}, layers=[layer("application/x-tar-lzma")]), "unsupported media type"),
    (doc(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D, "size": 5}, layers=[]),
     "not a container image"),
    (doc(config={"digest": D, "size": 1 << 30}, layers=[]), "more than"),
])
def test_bad_manifests_are_refused_naming_the_problem(body: bytes, fragment: str) -> None:
    with pytest.raises(FailedPrecondition) as err:
        manifest.parse_manifest(body, "image x")
    assert fragment in err.value.message and err.value.message.startswith("image x")


def test_oversized_manifest_is_refused_before_parsing() -> None:
    with pytest.raises(FailedPrecondition, match="more than"):
        manifest.parse_manifest(b" " * (manifest.MAX_MANIFEST_BYTES + 1), "m")


def test_schema1_and_unknown_types_are_unsupported() -> None:
    schema1 = doc(schemaVersion=1, fsLayers=[])
    kind = manifest.media_type_of(schema1, "application/json", "m")
    with pytest.raises(FailedPrecondition, match="schema 1"):
        manifest.check_supported(kind, "m")
    assert manifest.media_type_of(doc(manifests=[]), "", "m") == manifest.OCI_INDEX
    assert manifest.media_type_of(doc(config={}, layers=[]), "", "m") == manifest.OCI_MANIFEST
    assert manifest.media_type_of(doc(config={}, layers=[]), manifest.DOCKER_MANIFEST, "m") == manifest.DOCKER_MANIFEST


def test_config_fields_a_container_needs() -> None:
    c = manifest.parse_config(doc(os="linux", architecture="amd64", rootfs={"type": "layers", "diff_ids": [D, E]},
                                  config={"User": "www-data:1004", "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "x"],
                                          "Env": ["A=1"], "WorkingDir": "/w", "StopSignal": "SIGQUIT",
                                          "Volumes": {"/data": {}}, "ExposedPorts": {"80/tcp": {}},
                                          "Labels": {"k": "v"}}), "cfg")
    assert (c.user, c.entrypoint, c.cmd, c.env, c.working_dir, c.stop_signal) == (
        "www-data:1004", ("/bin/sh",), ("-c", "x"), ("A=1",), "/w", "SIGQUIT")
    assert c.volumes == ("/data",) and c.exposed_ports == ("80/tcp",) and c.labels == {"k": "v"}
    assert c.diff_ids == (D, E)
    with pytest.raises(FailedPrecondition, match="rootfs"):
        manifest.parse_config(doc(os="linux"), "cfg")
    with pytest.raises(FailedPrecondition, match="'Cmd' must be a list of strings"):
        manifest.parse_config(doc(rootfs={"diff_ids": []}, config={"Cmd": "echo"}), "cfg")


@pytest.mark.parametrize("user, uid, name", [
    ("", None, ""), ("1002", 1002, ""), ("www-data", None, "www-data"), ("1003:1004", 1003, ""),
    ("www-data:1004", None, "www-data"), ("0", 0, ""),
])
def test_image_user_gives_uid_or_username(user: str, uid: int | None, name: str) -> None:
    assert user_of(user) == (uid, name)


def test_chain_ids_follow_the_oci_formula() -> None:
    import hashlib
    assert chain_ids(()) == ()
    assert chain_ids((D,)) == (D,)
    second = "sha256:" + hashlib.sha256(f"{D} {E}".encode()).hexdigest()
    assert chain_ids((D, E)) == (D, second)


def entry(os: str, arch: str, variant: str = "", os_version: str = "", digest: str = D) -> Descriptor:
    return Descriptor(media_type=manifest.OCI_MANIFEST, digest=digest, size=1,
                      platform=Platform(os=os, architecture=arch, variant=variant, os_version=os_version))


def test_platform_selection() -> None:
    index = [entry("linux", "arm64", "v8", digest="a"), entry("linux", "amd64", digest="b"),
             entry("windows", "amd64", os_version="10.0.20348.1", digest="c")]
    assert platform.select(index, Platform("linux", "amd64"), "i").digest == "b"
    assert platform.select(index, Platform("linux", "arm64", "v8"), "i").digest == "a"
    # arm64 without a variant in the index still matches a v8 node
    assert platform.select([entry("linux", "arm64")], Platform("linux", "arm64", "v8"), "i").platform is not None
    # arm v7 image does not run on a v6 node
    with pytest.raises(NotFound, match="linux/arm/v7"):
        platform.select([entry("linux", "arm", "v7")], Platform("linux", "arm", "v6"), "image x")


def test_windows_images_match_the_node_build_not_the_revision() -> None:
    index = [entry("windows", "amd64", os_version="10.0.17763.5329", digest="ltsc2019"),
             entry("windows", "amd64", os_version="10.0.20348.2227", digest="ltsc2022")]
    node = Platform("windows", "amd64", os_version="10.0.20348.1000")
    assert platform.select(index, node, "i").digest == "ltsc2022"
    with pytest.raises(NotFound, match="no image for this node's platform"):
        platform.select(index, Platform("windows", "amd64", os_version="10.0.26100.1"), "i")


def test_host_platform_and_config_syntax() -> None:
    host = platform.host()
    assert host.os == "linux" and host.architecture
    assert platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    with pytest.raises(ValueError):
        platform.parse("linux")
