"""Image references are normalised like docker/containerd, and bad ones are refused with a clear reason."""

from __future__ import annotations

import pytest

from cri_shim.errors import InvalidArgument
from cri_shim.images import reference

HEX = "a" * 64


@pytest.mark.parametrize("text, name, tag, digest", [
    ("busybox", "docker.io/library/busybox", "latest", ""),
    ("busybox:1.36", "docker.io/library/busybox", "1.36", ""),
    ("library/busybox", "docker.io/library/busybox", "latest", ""),
    ("index.docker.io/library/busybox", "docker.io/library/busybox", "latest", ""),
    ("docker.io/busybox", "docker.io/library/busybox", "latest", ""),
    ("user/app:v1", "docker.io/user/app", "v1", ""),
    ("registry.k8s.io/e2e-test-images/busybox:1.29-2", "registry.k8s.io/e2e-test-images/busybox", "1.29-2", ""),
    ("localhost/app", "localhost/app", "latest", ""),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c", "latest", ""),
    ("gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:" + HEX,
     "gcr.io/k8s-staging-cri-tools/test-image-digest", "", "sha256:" + HEX),
    # name:tag@digest pulls by digest; the tag is dropped (nobody verified it)
    ("quay.io/x/y:1.0@sha256:" + HEX, "quay.io/x/y", "", "sha256:" + HEX),
])
def test_references_are_normalised(text: str, name: str, tag: str, digest: str) -> None:
    ref = reference.parse(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)


def test_string_forms_are_what_repo_tags_and_repo_digests_list() -> None:
    assert str(reference.parse("busybox")) == "docker.io/library/busybox:latest"
    ref = reference.parse("gcr.io/a/b@sha256:" + HEX)
    assert str(ref) == "gcr.io/a/b@sha256:" + HEX
    assert ref.tagged == ""
    assert ref.with_digest("sha256:" + "b" * 64) == "gcr.io/a/b@sha256:" + "b" * 64


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("Busybox/Upper", "lowercase"),
    ("docker.io/Upper/x", "lowercase"),
    ("busybox:", "invalid tag"),
    ("busybox:-bad", "invalid tag"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busy box", "whitespace"),
    ("a//b", "invalid repository name"),
    ("busybox@sha256:1234", "64 lowercase hex"),
    ("busybox@md5:" + "a" * 32, "unsupported algorithm"),
    ("busybox@notadigest", "not a valid digest"),
    ("-host.example/x", "invalid registry host"),
    ("example.com/" + "a" * 250, "longer than 255"),
    ("sha256:" + HEX, "image id"),
])
def test_invalid_references_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        reference.parse(text)
    assert fragment in err.value.message


def test_lookup_tells_ids_from_references() -> None:
    assert reference.parse_lookup("sha256:" + HEX).image_id_prefix == "sha256:" + HEX
    assert reference.parse_lookup(HEX).image_id_prefix == "sha256:" + HEX
    assert reference.parse_lookup("sha256:abcdef012345").image_id_prefix == "sha256:abcdef012345"
    by_name = reference.parse_lookup("registry.k8s.io/pause:3.9")
    assert by_name.image_id_prefix == "" and str(by_name.reference) == "registry.k8s.io/pause:3.9"
    # 12+ hex characters are both a short id and a docker.io name: both are tried, the id first
    both = reference.parse_lookup("abcdef012345")
    assert both.image_id_prefix == "sha256:abcdef012345"
    assert both.reference is not None and both.reference.name == "docker.io/library/abcdef012345"
    with pytest.raises(InvalidArgument, match="empty"):
        reference.parse_lookup("")
