"""Differential: the same OCI spec through runc and through our process_security; the process must see the same.

runc runs the bundle as a full container; our side runs `prepare` + `apply`
in a forked child of a fresh interpreter (the part of the container init
this library owns) and execs the same busybox applet from the host. Compared:
CapInh/CapPrm/CapEff/CapBnd/CapAmb, NoNewPrivs, Seccomp mode, Uid/Gid/Groups,
and the outcome (exit code, message) of syscalls the seccomp profile decides.
Mount-table, hostname, sysctl and masked-path comparisons need the native
container init (runtime/linux, pod shim) and join this battery when it lands.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.external.runc import Runc, RuncConfig
from runtime.linux import capabilities as caps_mod
from runtime.linux import seccomp
from runtime.linux.capabilities import CapabilityRequest
from tests.harness.bundle import make_rootfs, oci_spec
from tests.harness.daemon import make_workdir
from tests.harness.runc_run import run_to_exit, subreaper
from tests.harness.secure_exec import run

pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (make deps)")

FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups")
DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW",
              "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV}]}


def default_profile(bounding: list[str]) -> dict[str, Any]:
    return seccomp.runtime_default_profile(bounding)


def case(uid: int = 0, gid: int = 0, groups: tuple[int, ...] = (), request: CapabilityRequest | None = None,
         privileged: bool = False, nnp: bool = True,
         profile: Callable[[list[str]], dict[str, Any] | None] = default_profile) -> Callable[[list[str]], Any]:
    def build(args: list[str]) -> dict[str, Any]:
        caps = caps_mod.oci_capabilities(request, privileged=privileged, uid=uid)
        return oci_spec(args, uid=uid, gid=gid, groups=groups, caps=caps, no_new_privs=nnp,
                        seccomp=None if privileged else profile(caps["bounding"]))
    return build


CASES: dict[str, Callable[[list[str]], Any]] = {
    "root-default": case(),
    "non-root-with-groups": case(uid=1000, gid=1000, groups=(1000, 50000)),
    "drop-all": case(request=CapabilityRequest(drop=("ALL",))),
    "add-all-drop-chown": case(request=CapabilityRequest(add=("ALL",), drop=("CHOWN",))),
    "ambient-non-root": case(uid=1000, gid=1000, request=CapabilityRequest(add_ambient=("NET_BIND_SERVICE",))),
    "privileged": case(privileged=True, nnp=False),
    "nnp-off-non-root": case(uid=1000, gid=1000, nnp=False),
    "sys-admin-default-profile": case(request=CapabilityRequest(add=("SYS_ADMIN",))),
    "localhost-deny-mkdir": case(profile=lambda _b: json.loads(json.dumps(DENY_MKDIR))),
    "unconfined": case(profile=lambda _b: None),
}


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Runc, Path, Path]]:
    workdir = make_workdir("diff")
    try:
        rootfs = make_rootfs(workdir / "rootfs")
        with subreaper():
            yield Runc(RuncConfig(root=str(workdir / "state"))), workdir, rootfs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def status_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = " ".join(value.split())
    return out


def both(env: tuple[Runc, Path, Path], build: Callable[[list[str]], Any], args: list[str]) -> tuple[Any, Any]:
    runc, workdir, rootfs = env
    theirs = run_to_exit(runc, workdir, rootfs, build(["/bin/busybox", *args]))
    ours = run(build(["/bin/busybox", *args]), ["/bin/busybox", *args])
    return theirs, ours


@pytest.mark.parametrize("name", sorted(CASES))
def test_process_status_matches_runc(env: tuple[Runc, Path, Path], name: str) -> None:
    theirs, ours = both(env, CASES[name], ["cat", "/proc/self/status"])
    assert theirs.exit_code == 0 and ours.returncode == 0, (theirs.stderr, ours.stderr)
    expected = status_fields(theirs.stdout)
    assert set(expected) == set(FIELDS)
    assert status_fields(ours.stdout) == expected


# Probes that are harmless if they succeed (our side runs them on the host, in no container).
PROBES = {
    "unshare-user": ["unshare", "-U", "true"],
    "mkdir": ["mkdir", "/tmp/cri-shim-probe-never-created"],  # EXDEV from the profile, on both sides
    "chroot": ["chroot", "/", "true"],
    "nice": ["nice", "-n", "-5", "true"],
}
PAIRS = [("root-default", "unshare-user"), ("root-default", "chroot"), ("root-default", "nice"),
         ("drop-all", "chroot"), ("sys-admin-default-profile", "unshare-user"),
         ("localhost-deny-mkdir", "mkdir"), ("localhost-deny-mkdir", "unshare-user")]


@pytest.mark.parametrize("name, probe", PAIRS)
def test_syscall_outcomes_match_runc(env: tuple[Runc, Path, Path], name: str, probe: str) -> None:
    theirs, ours = both(env, CASES[name], PROBES[probe])
    assert (ours.returncode, ours.stderr.strip()) == (theirs.exit_code, theirs.stderr.strip())
    if (name, probe) in (("root-default", "unshare-user"), ("localhost-deny-mkdir", "mkdir")):
        assert theirs.exit_code != 0  # the comparison is not between two successes
    assert not Path(PROBES["mkdir"][1]).exists()
