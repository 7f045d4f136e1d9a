"""Capability sets from CRI requests (containerd's rules) and OCI validation, without touching the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.base import InvalidSpec
from runtime.linux import capabilities as caps
from runtime.linux.capabilities import CapabilityRequest, CapabilitySets, oci_capabilities

ALL = caps.known_capabilities(40)
# What the project machine's root holds: everything but CAP_SYS_RESOURCE.
HOST = tuple(c for c in ALL if c != "CAP_SYS_RESOURCE")


def test_numbers_cover_every_capability_of_linux_6() -> None:
    assert sorted(caps.CAPABILITY_NUMBERS.values()) == list(range(41))
    assert caps.CAPABILITY_NUMBERS["CAP_CHECKPOINT_RESTORE"] == 40
    assert caps.cap_last_cap() >= 40


def test_default_set_is_containerds_fourteen() -> None:
    assert sorted(caps.DEFAULT_CAPABILITIES) == sorted([
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"])


def test_no_request_gives_default_set_and_empty_inheritable_and_ambient() -> None:
    out = oci_capabilities(None, privileged=False, uid=0, available=HOST)
    assert sorted(out["bounding"]) == sorted(caps.DEFAULT_CAPABILITIES)
    assert out["effective"] == out["permitted"] == out["bounding"]
    # CVE-2022-29162: a non-empty inheritable set lets file capabilities escalate on exec.
    assert out["inheritable"] == [] and out["ambient"] == []


def test_add_all_then_drop_one_keeps_everything_else() -> None:
    out = oci_capabilities(CapabilityRequest(add=("ALL",), drop=("CHOWN",)), privileged=False, uid=0,
                           available=HOST)
    assert set(out["bounding"]) == set(HOST) - {"CAP_CHOWN"}


def test_drop_all_then_add_one_gives_only_that_one() -> None:
    out = oci_capabilities(CapabilityRequest(add=("NET_BIND_SERVICE",), drop=("ALL",)), privileged=False,
                           uid=0, available=HOST)
    assert out["bounding"] == out["effective"] == ["CAP_NET_BIND_SERVICE"]


def test_add_all_and_drop_all_gives_nothing() -> None:
    out = oci_capabilities(CapabilityRequest(add=("ALL",), drop=("ALL",)), privileged=False, uid=0,
                           available=HOST)
    assert out["bounding"] == []


def test_names_accept_any_case_and_the_cap_prefix() -> None:
    out = oci_capabilities(CapabilityRequest(add=("sys_admin", "CAP_NET_ADMIN"), drop=("kill",)),
                           privileged=False, uid=0, available=HOST)
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"} <= set(out["bounding"])
    assert "CAP_KILL" not in out["bounding"]


@pytest.mark.parametrize("field, request_", [
    ("add_capabilities", CapabilityRequest(add=("NOT_A_CAP",))),
    ("drop_capabilities", CapabilityRequest(drop=("",))),
    ("add_ambient_capabilities", CapabilityRequest(add_ambient=("BOGUS",))),
])
def test_unknown_capability_is_rejected_naming_the_field(field: str, request_: CapabilityRequest) -> None:
    with pytest.raises(InvalidSpec) as err:
        oci_capabilities(request_, privileged=False, uid=0, available=HOST)
    assert err.value.field.endswith(field)


def test_capability_the_runtime_does_not_hold_is_rejected() -> None:
    with pytest.raises(InvalidSpec, match="CAP_SYS_RESOURCE not available"):
        oci_capabilities(CapabilityRequest(add=("SYS_RESOURCE",)), privileged=False, uid=0, available=HOST)


def test_privileged_gets_every_available_capability_and_ignores_drop() -> None:
    out = oci_capabilities(CapabilityRequest(drop=("ALL",)), privileged=True, uid=0, available=HOST)
    assert out["bounding"] == out["effective"] == out["permitted"] == list(HOST)
    assert out["inheritable"] == out["ambient"] == []


def test_non_root_user_has_no_effective_or_permitted_capabilities() -> None:
    out = oci_capabilities(CapabilityRequest(add=("NET_ADMIN",)), privileged=False, uid=1000, available=HOST)
    assert "CAP_NET_ADMIN" in out["bounding"]
    assert out["effective"] == out["permitted"] == out["inheritable"] == out["ambient"] == []


def test_ambient_capabilities_are_inheritable_and_effective_for_a_non_root_user() -> None:
    out = oci_capabilities(CapabilityRequest(add_ambient=("net_bind_service",)), privileged=False, uid=1000,
                           available=HOST)
    assert out["ambient"] == out["inheritable"] == out["effective"] == out["permitted"] == ["CAP_NET_BIND_SERVICE"]


def test_ambient_capability_outside_the_bounding_set_is_rejected() -> None:
    with pytest.raises(InvalidSpec, match="add them with add_capabilities"):
        oci_capabilities(CapabilityRequest(add_ambient=("NET_ADMIN",)), privileged=False, uid=0, available=HOST)


def test_available_capabilities_are_those_held_in_permitted_and_bounding(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapPrm:\t0000000000000003\nCapBnd:\t0000000000000006\n")
    assert caps.available_capabilities(40, status) == ("CAP_DAC_OVERRIDE",)


def test_from_oci_turns_names_into_masks_and_back() -> None:
    oci = oci_capabilities(None, privileged=False, uid=0, available=HOST)
    sets = CapabilitySets.from_oci(oci, last_cap=40)
    assert sets.bounding == caps.mask(caps.DEFAULT_CAPABILITIES) == 0xA80425FB
    assert sets.inheritable == sets.ambient == 0
    assert sets.to_oci()["bounding"] == caps.names_of(0xA80425FB)


def test_from_oci_none_means_no_capabilities() -> None:
    sets = CapabilitySets.from_oci(None, last_cap=40)
    assert (sets.bounding, sets.effective, sets.permitted) == (0, 0, 0)


@pytest.mark.parametrize("oci, field", [
    ({"bounding": ["CAP_NOPE"]}, "process.capabilities.bounding"),
    ({"effective": "CAP_CHOWN"}, "process.capabilities.effective"),
    ({"effective": ["CAP_CHOWN"], "permitted": []}, "process.capabilities.effective"),
    ({"ambient": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]}, "process.capabilities.ambient"),
    ({"weird": []}, "process.capabilities"),
])
def test_from_oci_rejects_invalid_sets_naming_the_field(oci: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        CapabilitySets.from_oci(oci, last_cap=40)
    assert err.value.field == field


def test_from_oci_skips_capabilities_newer_than_the_kernel() -> None:
    sets = CapabilitySets.from_oci({"bounding": ["CAP_CHOWN", "CAP_CHECKPOINT_RESTORE"]}, last_cap=39)
    assert sets.bounding == 1
