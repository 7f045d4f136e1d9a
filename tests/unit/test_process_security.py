"""`prepare`: every security field of an OCI spec validated before any process exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.base import InvalidSpec, Unsupported
from runtime.linux import capabilities, process_security, seccomp, users


def spec(**linux: Any) -> dict[str, Any]:
    caps = capabilities.oci_capabilities(None, privileged=False, uid=0,
                                         available=capabilities.known_capabilities(40))
    return {"process": {"user": {"uid": 0, "gid": 0}, "capabilities": caps, "noNewPrivileges": True},
            "linux": {"namespaces": [{"type": "network"}, {"type": "ipc"}, {"type": "uts"}], **linux}}


def test_prepare_compiles_seccomp_and_collects_everything() -> None:
    s = spec(seccomp=seccomp.runtime_default_profile(capabilities.DEFAULT_CAPABILITIES),
             sysctl={"net.ipv4.ping_group_range": "0 0"}, maskedPaths=["/proc/kcore"], readonlyPaths=["/proc/sys"])
    p = process_security.prepare(s)
    assert p.seccomp is not None and p.seccomp.instructions > 100
    assert p.caps.bounding == capabilities.mask(capabilities.DEFAULT_CAPABILITIES)
    assert p.no_new_privs and (p.uid, p.gid, p.additional_gids) == (0, 0, ())
    assert p.sysctls == ((("net", "ipv4", "ping_group_range"), "0 0"),)
    assert p.masked_paths == ("/proc/kcore",) and p.readonly_paths == ("/proc/sys",)


def test_no_seccomp_in_the_spec_means_no_filter() -> None:
    assert process_security.prepare(spec()).seccomp is None


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["process"]["user"].update(uid=2**32), "process.user.uid"),
    (lambda s: s["process"]["user"].update(umask=0o1777), "process.user.umask"),
    (lambda s: s["process"].update(noNewPrivileges="yes"), "process.noNewPrivileges"),
    (lambda s: s["process"]["capabilities"]["bounding"].append("CAP_FLY"), "process.capabilities.bounding"),
    (lambda s: s["linux"].update(sysctl={"kernel.core_pattern": "|/x"}), "linux.sysctl['kernel.core_pattern']"),
    (lambda s: s["linux"].update(maskedPaths=["proc/kcore"]), "linux.maskedPaths"),
    (lambda s: s["linux"].update(readonlyPaths=["/proc/../etc"]), "linux.readonlyPaths"),
    (lambda s: s["linux"].update(seccomp={"defaultAction": "SCMP_ACT_MAYBE"}), "linux.seccomp.defaultAction"),
    (lambda s: s.pop("process"), "process"),
])
def test_invalid_fields_are_rejected_naming_the_field(mutate: Any, field: str) -> None:
    s = spec()
    mutate(s)
    with pytest.raises(InvalidSpec) as err:
        process_security.prepare(s)
    assert err.value.field == field


def test_net_sysctl_without_a_network_namespace_is_rejected() -> None:
    s = spec(sysctl={"net.ipv4.ip_forward": "1"})
    s["linux"]["namespaces"] = [{"type": "ipc"}]
    with pytest.raises(InvalidSpec, match="host network namespace"):
        process_security.prepare(s)


@pytest.mark.parametrize("key, value, message", [
    ("apparmorProfile", "my-profile", "apparmor is not supported"),
    ("selinuxLabel", "system_u:system_r:container_t:s0", "selinux is not enabled"),
])
def test_lsm_labels_this_host_cannot_apply_are_refused(key: str, value: str, message: str) -> None:
    s = spec()
    s["process"][key] = value
    with pytest.raises(Unsupported, match=message):
        process_security.prepare(s)


def test_prepare_can_resolve_the_user_in_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("app:x:1001:1002::/home/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("extra:x:3000:app\n")
    p = process_security.prepare(spec(), str(tmp_path), users.UserRequest(run_as_username="app"))
    assert (p.uid, p.gid, p.additional_gids) == (1001, 1002, (1002, 3000))
