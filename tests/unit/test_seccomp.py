"""Seccomp profiles and the compiled BPF, evaluated by a BPF interpreter (no kernel involved)."""

from __future__ import annotations

import errno
import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest

from runtime.base import InvalidSpec, Unsupported
from runtime.linux import capabilities, seccomp
from runtime.linux.seccomp import ProfileType
from tests.harness import bpf_eval
from tests.harness.bpf_eval import RET_ALLOW, RET_ERRNO, seccomp_data

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers below are x86_64's")

# x86_64 syscall numbers used below.
NR = {"read": 0, "write": 1, "mkdir": 83, "rmdir": 84, "socket": 41, "clone": 56, "unshare": 272,
      "mount": 165, "setns": 308, "keyctl": 250, "clone3": 435, "personality": 135, "getpid": 39,
      "ptrace": 101, "reboot": 169, "bpf": 321, "fchmodat2": 452, "chroot": 161}
CLONE_NEWUSER = 0x10000000
CLONE_THREAD_FLAGS = 0x003D0F00  # what glibc's pthread_create passes
AF_INET, AF_ALG, AF_VSOCK, AF_NETLINK = 2, 38, 40, 16
EPERM = RET_ERRNO | errno.EPERM


def verdict(bpf: bytes, name: str, *args: int) -> int:
    return bpf_eval.run(bpf, seccomp_data(NR[name], args=args))


@pytest.fixture(scope="module")
def default_bpf() -> bytes:
    return seccomp.compile_profile(seccomp.runtime_default_profile(capabilities.DEFAULT_CAPABILITIES)).bpf


def test_runtime_default_allows_ordinary_syscalls(default_bpf: bytes) -> None:
    for name in ("read", "write", "mkdir", "getpid", "ptrace"):
        assert verdict(default_bpf, name) == RET_ALLOW, name


@pytest.mark.parametrize("name", ["unshare", "mount", "setns", "keyctl", "reboot", "bpf", "chroot"])
def test_runtime_default_denies_privileged_syscalls_with_eperm(default_bpf: bytes, name: str) -> None:
    if name == "chroot":  # CAP_SYS_CHROOT is in the default set: chroot stays allowed
        assert verdict(default_bpf, name) == RET_ALLOW
    else:
        assert verdict(default_bpf, name) == EPERM


def test_runtime_default_clone_allows_threads_but_not_new_namespaces(default_bpf: bytes) -> None:
    assert verdict(default_bpf, "clone", CLONE_THREAD_FLAGS) == RET_ALLOW
    assert verdict(default_bpf, "clone", CLONE_NEWUSER) == EPERM
    assert verdict(default_bpf, "clone", CLONE_THREAD_FLAGS | 0x40000000) == EPERM  # CLONE_NEWNET


def test_runtime_default_clone3_answers_enosys_so_libc_falls_back(default_bpf: bytes) -> None:
    assert verdict(default_bpf, "clone3") == RET_ERRNO | errno.ENOSYS


def test_runtime_default_socket_families_except_alg_and_vsock(default_bpf: bytes) -> None:
    assert verdict(default_bpf, "socket", AF_INET) == RET_ALLOW
    assert verdict(default_bpf, "socket", AF_NETLINK) == RET_ALLOW
    assert verdict(default_bpf, "socket", AF_ALG + 1) == RET_ALLOW
    assert verdict(default_bpf, "socket", AF_VSOCK + 1) == RET_ALLOW
    assert verdict(default_bpf, "socket", AF_ALG) == EPERM
    assert verdict(default_bpf, "socket", AF_VSOCK) == EPERM


def test_runtime_default_personality_only_safe_values(default_bpf: bytes) -> None:
    assert verdict(default_bpf, "personality", 0) == RET_ALLOW
    assert verdict(default_bpf, "personality", 0xFFFFFFFF) == RET_ALLOW
    assert verdict(default_bpf, "personality", 0x0040000) == EPERM  # READ_IMPLIES_EXEC


def test_runtime_default_with_sys_admin_allows_namespaces_and_mount() -> None:
    bpf = seccomp.compile_profile(seccomp.runtime_default_profile(
        [*capabilities.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])).bpf
    assert verdict(bpf, "unshare", CLONE_NEWUSER) == RET_ALLOW
    assert verdict(bpf, "clone", CLONE_NEWUSER) == RET_ALLOW
    assert verdict(bpf, "mount") == RET_ALLOW
    assert verdict(bpf, "clone3") == RET_ALLOW


def test_runtime_default_drops_chroot_without_sys_chroot() -> None:
    bpf = seccomp.compile_profile(seccomp.runtime_default_profile(["CAP_CHOWN"])).bpf
    assert verdict(bpf, "chroot") == EPERM


def test_syscalls_newer_than_the_profile_get_enosys_not_eperm(default_bpf: bytes) -> None:
    # A syscall newer than anything the profile (or libseccomp) knows: a newer libc must see ENOSYS
    # and fall back to the older call, as under runc.
    assert verdict(default_bpf, "fchmodat2") == RET_ALLOW
    assert bpf_eval.run(default_bpf, seccomp_data(1000)) == RET_ERRNO | errno.ENOSYS
    assert bpf_eval.run(default_bpf, seccomp_data(NR["keyctl"])) == EPERM  # older and not listed: EPERM


def test_enosys_threshold_is_the_highest_syscall_the_profile_names() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    bpf = seccomp.compile_profile(profile).bpf
    assert verdict(bpf, "read") == RET_ALLOW
    assert verdict(bpf, "getpid") == RET_ERRNO | errno.ENOSYS


def test_enosys_stub_leaves_other_architectures_to_the_filter(default_bpf: bytes) -> None:
    # i386 getpid (20) is allowed by the profile's SCMP_ARCH_X86 part, and nr 1000 there is plain EPERM.
    assert bpf_eval.run(default_bpf, seccomp_data(20, arch=bpf_eval.AUDIT_ARCH_I386)) == RET_ALLOW
    assert bpf_eval.run(default_bpf, seccomp_data(1000, arch=bpf_eval.AUDIT_ARCH_I386)) == EPERM


def test_no_enosys_stub_when_the_default_allows() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 20}]}
    bpf = seccomp.compile_profile(profile).bpf
    assert verdict(bpf, "mkdir") == RET_ERRNO | 20
    assert verdict(bpf, "fchmodat2") == RET_ALLOW


def profile_with(**rule: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], **rule}]}


def test_errno_action_defaults_to_eperm_and_honours_errno_ret() -> None:
    assert verdict(seccomp.compile_profile(profile_with(action="SCMP_ACT_ERRNO")).bpf, "mkdir") == EPERM
    bpf = seccomp.compile_profile(profile_with(action="SCMP_ACT_ERRNO", errnoRet=errno.EROFS)).bpf
    assert verdict(bpf, "mkdir") == RET_ERRNO | errno.EROFS


def test_default_errno_ret_is_used() -> None:
    bpf = seccomp.compile_profile({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EACCES,
                                   "syscalls": [{"names": ["read", "openat2"], "action": "SCMP_ACT_ALLOW"}]}).bpf
    assert verdict(bpf, "read") == RET_ALLOW
    assert verdict(bpf, "getpid") == RET_ERRNO | errno.EACCES


@pytest.mark.parametrize("action, ret", [("SCMP_ACT_KILL", bpf_eval.RET_KILL_THREAD),
                                         ("SCMP_ACT_KILL_PROCESS", bpf_eval.RET_KILL_PROCESS),
                                         ("SCMP_ACT_TRAP", bpf_eval.RET_TRAP),
                                         ("SCMP_ACT_LOG", bpf_eval.RET_LOG)])
def test_each_action_compiles_to_its_kernel_return(action: str, ret: int) -> None:
    assert verdict(seccomp.compile_profile(profile_with(action=action)).bpf, "mkdir") == ret


def test_argument_conditions_are_anded() -> None:
    bpf = seccomp.compile_profile(profile_with(action="SCMP_ACT_ERRNO", args=[
        {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 0o700, "op": "SCMP_CMP_EQ"}])).bpf
    assert verdict(bpf, "mkdir", 1, 0o700) == EPERM
    assert verdict(bpf, "mkdir", 1, 0o755) == RET_ALLOW


def test_repeated_argument_index_becomes_separate_rules_like_runc() -> None:
    bpf = seccomp.compile_profile(profile_with(action="SCMP_ACT_ERRNO", args=[
        {"index": 1, "value": 0o700, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 0o755, "op": "SCMP_CMP_EQ"}])).bpf
    assert verdict(bpf, "mkdir", 0, 0o700) == EPERM
    assert verdict(bpf, "mkdir", 0, 0o755) == EPERM
    assert verdict(bpf, "mkdir", 0, 0o777) == RET_ALLOW


def test_masked_eq_operator() -> None:
    bpf = seccomp.compile_profile(profile_with(action="SCMP_ACT_ERRNO", args=[
        {"index": 1, "value": 0o7000, "valueTwo": 0o1000, "op": "SCMP_CMP_MASKED_EQ"}])).bpf
    assert verdict(bpf, "mkdir", 0, 0o1777) == EPERM
    assert verdict(bpf, "mkdir", 0, 0o2777) == RET_ALLOW


def test_unknown_syscall_names_are_skipped() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": ["no_such_syscall", "read"], "action": "SCMP_ACT_ALLOW"}]}
    assert verdict(seccomp.compile_profile(profile).bpf, "read") == RET_ALLOW


def test_rule_equal_to_default_action_is_skipped() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert verdict(seccomp.compile_profile(profile).bpf, "read") == RET_ALLOW


def test_flags_are_passed_to_the_loader() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG",
                                                            "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}
    compiled = seccomp.compile_profile(profile)
    assert compiled.flags == 2 | 4
    assert compiled.seccomp_nr == 317


@pytest.mark.parametrize("profile, field", [
    ({"syscalls": []}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_DANCE"}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "linux.seccomp.architectures"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}, "linux.seccomp.flags"),
    (profile_with(action="SCMP_ACT_ALLOW", errnoRet=1) | {"defaultAction": "SCMP_ACT_ERRNO"},
     "linux.seccomp.syscalls[0].action"),
    (profile_with(action="SCMP_ACT_ERRNO", args=[{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[0].args[0].index"),
    (profile_with(action="SCMP_ACT_ERRNO", args=[{"index": 0, "value": 0, "op": "SCMP_CMP_LIKE"}]),
     "linux.seccomp.syscalls[0].args[0].op"),
    (profile_with(action="SCMP_ACT_ERRNO", args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[0].args[0].value"),
    (profile_with(action="SCMP_ACT_ERRNO", errnoRet=70000), "linux.seccomp.syscalls[0].action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]},
     "linux.seccomp.syscalls[0].names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "surprise": 1}, "linux.seccomp"),
])
def test_invalid_profiles_are_rejected_naming_the_field(profile: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        seccomp.compile_profile(profile)
    assert err.value.field == field


def test_notify_action_is_unsupported_not_ignored() -> None:
    with pytest.raises(Unsupported, match="SCMP_ACT_NOTIFY"):
        seccomp.compile_profile(profile_with(action="SCMP_ACT_NOTIFY"))


# ---------------------------------------------------------------- choosing and loading profiles


def write_profile(tmp_path: Path, profile: object, name: str = "p.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(profile))
    return str(path)


def test_unset_unconfined_and_privileged_mean_no_filter(tmp_path: Path) -> None:
    caps = capabilities.DEFAULT_CAPABILITIES
    assert seccomp.profile_for_container(None, "", privileged=False, bounding=caps) is None
    assert seccomp.profile_for_container(ProfileType.UNCONFINED, "", privileged=False, bounding=caps) is None
    assert seccomp.profile_for_container(ProfileType.RUNTIME_DEFAULT, "", privileged=True, bounding=caps) is None
    assert seccomp.profile_for_container(ProfileType.RUNTIME_DEFAULT, "", privileged=False,
                                         bounding=caps) == seccomp.runtime_default_profile(caps)


def test_localhost_profile_is_loaded_from_an_absolute_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path, profile_with(action="SCMP_ACT_ERRNO"))
    profile = seccomp.profile_for_container(ProfileType.LOCALHOST, path, privileged=False, bounding=())
    assert profile is not None and profile["syscalls"][0]["names"] == ["mkdir"]


def test_missing_localhost_profile_is_an_error_at_create(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as err:
        seccomp.profile_for_container(ProfileType.LOCALHOST, str(tmp_path / "nope.json"), privileged=False,
                                      bounding=())
    assert err.value.field == "linux.security_context.seccomp.localhost_ref"
    assert "No such file" in err.value.message


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"defaultAction": "SCMP_ACT_NOPE"}), "unknown seccomp action"),
    (json.dumps({"defaultAction": "SCMP_ACT_ERRNO",
                 "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["X"]}}]}),
     "not supported"),
])
def test_invalid_localhost_profile_is_an_error_at_create(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidSpec, match=match):
        seccomp.profile_for_container(ProfileType.LOCALHOST, str(path), privileged=False, bounding=())


def test_localhost_profile_must_be_absolute_regular_and_small(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="must be absolute"):
        seccomp.load_localhost_profile("profiles/p.json", "f")
    with pytest.raises(InvalidSpec, match="not a regular file"):
        seccomp.load_localhost_profile(str(tmp_path), "f")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidSpec, match="not a regular file"):
        seccomp.load_localhost_profile(str(fifo), "f")  # must not block waiting for a writer
    big = tmp_path / "big.json"
    big.write_text(" " * (seccomp.MAX_PROFILE_BYTES + 1))
    with pytest.raises(InvalidSpec, match="larger than"):
        seccomp.load_localhost_profile(str(big), "f")


def test_docker_format_arch_map_is_translated(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [{"name": "mkdir", "action": "SCMP_ACT_ERRNO"}]})
    profile = seccomp.load_localhost_profile(path, "f")
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert verdict(seccomp.compile_profile(profile).bpf, "mkdir") == EPERM


@pytest.mark.parametrize("value, expected", [
    ("", (None, "")), ("runtime/default", (ProfileType.RUNTIME_DEFAULT, "")),
    ("docker/default", (ProfileType.RUNTIME_DEFAULT, "")), ("unconfined", (ProfileType.UNCONFINED, "")),
    ("localhost//etc/p.json", (ProfileType.LOCALHOST, "/etc/p.json")),
])
def test_legacy_profile_path_strings(value: str, expected: tuple[ProfileType | None, str]) -> None:
    assert seccomp.parse_legacy_profile_path(value, "f") == expected


def test_legacy_profile_path_unknown_is_rejected() -> None:
    with pytest.raises(InvalidSpec, match="unknown seccomp profile"):
        seccomp.parse_legacy_profile_path("apparmor/x", "f")


def test_filter_cache_reuses_compiled_filters_and_stays_bounded() -> None:
    cache = seccomp.FilterCache(max_entries=2)
    default = seccomp.runtime_default_profile(capabilities.DEFAULT_CAPABILITIES)
    first = cache.compile(default)
    assert cache.compile(json.loads(json.dumps(default))) is first  # same content, another object
    admin = cache.compile(seccomp.runtime_default_profile([*capabilities.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]))
    assert admin.bpf != first.bpf
    cache.compile(profile_with(action="SCMP_ACT_ERRNO"))
    assert len(cache) == 2
    assert cache.compile(default) is not first  # evicted, compiled again


def test_filter_cache_does_not_cache_errors() -> None:
    cache = seccomp.FilterCache()
    with pytest.raises(InvalidSpec):
        cache.compile({"defaultAction": "SCMP_ACT_NOPE"})
    assert len(cache) == 0
