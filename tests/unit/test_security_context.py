"""CRI security context -> OCI security fields: the rules critest's Security Context specs check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.base import InvalidSpec, Unsupported
from runtime.linux import capabilities, process_security, seccomp, users
from runtime.linux.capabilities import CapabilityRequest
from runtime.linux.security_context import AppArmorType, SecurityContextRequest, security_parts

HOST = tuple(c for c in capabilities.known_capabilities(40) if c != "CAP_SYS_RESOURCE")
KUBELET_MASKED = ("/proc/kcore", "/proc/keys", "/sys/firmware")
KUBELET_READONLY = ("/proc/sys", "/proc/bus")


@pytest.fixture
def image(tmp_path: Path) -> str:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nweb:x:33:\nlogs:x:4:web\n")
    return str(tmp_path)


def parts(image: str, **kw: Any) -> Any:
    kw.setdefault("masked_paths", KUBELET_MASKED)
    kw.setdefault("readonly_paths", KUBELET_READONLY)
    return security_parts(SecurityContextRequest(**kw), image, available=HOST)


def test_default_container(image: str) -> None:
    p = parts(image)
    assert (p.user.uid, p.user.gid, p.user.additional_gids) == (0, 0, (0,))
    assert sorted(p.capabilities["bounding"]) == sorted(capabilities.DEFAULT_CAPABILITIES)
    assert p.seccomp is None  # CRI unset = unconfined (kubelet sends RuntimeDefault when it wants it)
    assert p.masked_paths == KUBELET_MASKED and p.readonly_paths == KUBELET_READONLY


def test_privileged_gets_everything_and_no_confinement(image: str) -> None:
    p = parts(image, privileged=True, sandbox_privileged=True, seccomp_type=seccomp.ProfileType.RUNTIME_DEFAULT,
              capabilities=CapabilityRequest(drop=("ALL",)))
    assert p.capabilities["bounding"] == list(HOST)
    assert p.seccomp is None and p.masked_paths == () and p.readonly_paths == ()


def test_privileged_container_in_an_unprivileged_sandbox_is_refused(image: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parts(image, privileged=True)
    assert err.value.field == "linux.security_context.privileged"


def test_empty_mask_lists_mean_unmasked(image: str) -> None:
    p = parts(image, masked_paths=(), readonly_paths=())
    assert p.masked_paths == () and p.readonly_paths == ()


def test_runtime_default_profile_follows_the_final_bounding_set(image: str) -> None:
    p = parts(image, seccomp_type=seccomp.ProfileType.RUNTIME_DEFAULT,
              capabilities=CapabilityRequest(add=("SYS_ADMIN",)))
    assert p.seccomp == seccomp.runtime_default_profile(p.capabilities["bounding"])
    assert any("unshare" in r["names"] for r in p.seccomp["syscalls"])


def test_missing_localhost_profile_fails_create(image: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as err:
        parts(image, seccomp_type=seccomp.ProfileType.LOCALHOST, seccomp_localhost_ref=str(tmp_path / "no.json"))
    assert err.value.field == "linux.security_context.seccomp.localhost_ref"


def test_user_is_resolved_in_the_image_and_caps_follow_the_uid(image: str) -> None:
    p = parts(image, run_as_username="web", supplemental_groups=(1234,))
    assert (p.user.uid, p.user.gid, p.user.additional_gids) == (33, 33, (33, 1234, 4))
    assert p.capabilities["effective"] == [] and p.capabilities["permitted"] == []
    strict = parts(image, run_as_user=33, supplemental_groups=(1234,),
                   supplemental_groups_policy=users.GroupsPolicy.STRICT)
    assert strict.user.additional_gids == (33, 1234)


def test_run_as_group_without_user_is_refused(image: str) -> None:
    with pytest.raises(InvalidSpec, match="run_as_group requires"):
        parts(image, run_as_group=5)


@pytest.mark.parametrize("kw, match", [
    ({"apparmor_type": AppArmorType.RUNTIME_DEFAULT}, "apparmor is not supported"),
    ({"apparmor_type": AppArmorType.LOCALHOST, "apparmor_localhost_ref": "p"}, "apparmor is not supported"),
    ({"selinux_options": ("", "", "container_t", "")}, "selinux is not enabled"),
])
def test_lsm_requests_this_host_cannot_honour_are_refused(image: str, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(Unsupported, match=match):
        parts(image, **kw)


def test_unconfined_apparmor_is_a_no_op(image: str) -> None:
    assert parts(image, apparmor_type=AppArmorType.UNCONFINED).seccomp is None


def test_relative_masked_path_is_refused(image: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parts(image, masked_paths=("proc/kcore",))
    assert err.value.field == "linux.security_context.masked_paths"


def test_apply_to_produces_a_spec_prepare_accepts(image: str) -> None:
    p = parts(image, run_as_user=33, no_new_privs=True, seccomp_type=seccomp.ProfileType.RUNTIME_DEFAULT)
    spec: dict[str, Any] = {"process": {"args": ["/bin/sh"], "user": {"uid": 0, "gid": 0, "umask": 0o22}},
                            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}}
    p.apply_to(spec)
    json.dumps(spec)  # plain JSON, as config.json will hold it
    assert spec["process"]["user"] == {"uid": 33, "gid": 33, "additionalGids": [33, 4], "umask": 0o22}
    prepared = process_security.prepare(spec)
    assert prepared.no_new_privs and prepared.seccomp is not None and prepared.caps.effective == 0
    parts(image).apply_to(spec)
    assert "seccomp" not in spec["linux"]  # unconfined removes a stale profile
