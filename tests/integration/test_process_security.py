"""process_security on the real kernel: a fresh Python prepares, forks, applies and execs; we read what the
process ends up with (/proc/self/status, errno of probed syscalls, files behind masks).

Each defence is paired with a contrast run that lacks it, so a test cannot pass vacuously.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from runtime.linux import capabilities, seccomp
from tests.harness.secure_exec import run
from tests.harness.security_specs import (CLONE_NEWIPC, CLONE_NEWNET, DEFAULT_MASK, PYTHON, caps_of, make_root,
                                          make_spec, masked_run, status_of)

# ---------------------------------------------------------------- identity and capabilities


def test_root_container_gets_default_capabilities_nnp_and_a_filter() -> None:
    st = status_of(make_spec())
    assert caps_of(st, "CapBnd") == caps_of(st, "CapEff") == caps_of(st, "CapPrm") == DEFAULT_MASK
    assert caps_of(st, "CapInh") == 0 and caps_of(st, "CapAmb") == 0  # CVE-2022-29162
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert st["Uid"].split() == ["0"] * 4


def test_contrast_without_apply_the_process_keeps_the_hosts_capabilities() -> None:
    # The same runner with an "everything" spec: shows the status parsing sees real differences.
    caps = capabilities.oci_capabilities(None, privileged=True, uid=0)
    st = status_of({"process": {"user": {"uid": 0, "gid": 0}, "capabilities": caps, "noNewPrivileges": False}})
    assert caps_of(st, "CapBnd") != DEFAULT_MASK and st["NoNewPrivs"] == "0" and st["Seccomp"] == "0"


def test_non_root_user_has_ids_groups_and_no_effective_capabilities() -> None:
    st = status_of(make_spec(uid=1000, gid=1001, groups=(1001, 2000, 3000)))
    assert st["Uid"].split() == ["1000"] * 4
    assert st["Gid"].split() == ["1001"] * 4
    assert st["Groups"].split() == ["1001", "2000", "3000"]
    assert caps_of(st, "CapEff") == caps_of(st, "CapPrm") == caps_of(st, "CapAmb") == 0
    assert caps_of(st, "CapBnd") == DEFAULT_MASK


def test_drop_all_leaves_root_without_capabilities() -> None:
    st = status_of(make_spec(request=capabilities.CapabilityRequest(drop=("ALL",))))
    assert caps_of(st, "CapBnd") == caps_of(st, "CapEff") == caps_of(st, "CapPrm") == 0


def test_add_capability_reaches_the_process() -> None:
    st = status_of(make_spec(request=capabilities.CapabilityRequest(add=("NET_ADMIN",), drop=("KILL",))))
    net_admin, kill = 1 << 12, 1 << 5
    assert caps_of(st, "CapEff") == caps_of(st, "CapBnd") == (DEFAULT_MASK | net_admin) & ~kill


BIND_PORT_80 = ("import socket,sys\ns=socket.socket()\n"
                "try:\n s.bind(('0.0.0.0',80)); print('bound')\n"
                "except OSError as e: print('errno', e.errno)\n")


def test_ambient_capability_lets_a_non_root_user_bind_port_80() -> None:
    request = capabilities.CapabilityRequest(add_ambient=("NET_BIND_SERVICE",))
    setup = [{"unshare": CLONE_NEWNET}]  # a private netns: port 80 of nobody else
    spec = make_spec(uid=1000, gid=1000, request=request)
    st = status_of(spec, setup=setup)
    assert caps_of(st, "CapAmb") == caps_of(st, "CapEff") == caps_of(st, "CapInh") == 1 << 10
    r = run(spec, [PYTHON, "-c", BIND_PORT_80], setup=setup)
    assert r.stdout.strip() == "bound", r.stderr
    contrast = run(make_spec(uid=1000, gid=1000), [PYTHON, "-c", BIND_PORT_80], setup=setup)
    assert contrast.stdout.strip() == f"errno {errno.EACCES}"


def test_no_new_privs_off_still_loads_the_filter_before_dropping_capabilities() -> None:
    st = status_of(make_spec(uid=1000, gid=1000, nnp=False))
    assert st["NoNewPrivs"] == "0" and st["Seccomp"] == "2"
    assert caps_of(st, "CapEff") == 0


def test_invalid_spec_fails_in_prepare_before_any_fork() -> None:
    r = run(make_spec(uid=2**32), ["/bin/true"])
    assert r.returncode == 3 and "PREPARE-ERROR process.user.uid" in r.stdout


# ---------------------------------------------------------------- seccomp

PROBE = r"""
import ctypes, json, os, socket, tempfile
libc = ctypes.CDLL(None, use_errno=True)
def sc(*args):
    r = libc.syscall(*[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
out = {"unshare_user": sc(272, 0x10000000), "keyctl": sc(250, 0, -3, 0, 0, 0),
       "clone3": sc(435, 0, 0), "nr_1000": sc(1000), "getpid": 0 if os.getpid() > 0 else 1}
try:
    socket.socket(38, socket.SOCK_SEQPACKET).close(); out["af_alg"] = 0
except OSError as e:
    out["af_alg"] = e.errno
d = tempfile.mkdtemp(); os.rmdir(d); out["mkdir"] = 0
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(out))
"""


def probe(spec: dict[str, Any]) -> dict[str, int]:
    r = run(spec, [PYTHON, "-c", PROBE])
    assert r.returncode == 0, r.stdout + r.stderr
    result: dict[str, int] = json.loads(r.stdout)
    return result


def test_runtime_default_blocks_namespaces_keyrings_and_af_alg_but_not_normal_work() -> None:
    got = probe(make_spec())
    assert got["unshare_user"] == errno.EPERM
    assert got["keyctl"] == errno.EPERM
    assert got["af_alg"] == errno.EPERM
    assert got["clone3"] == errno.ENOSYS  # libc falls back to clone, whose flags the filter can see
    assert got["nr_1000"] == errno.ENOSYS
    assert (got["getpid"], got["mkdir"], got["fork"]) == (0, 0, 7)


def test_contrast_unconfined_allows_what_runtime_default_blocks() -> None:
    got = probe(make_spec(profile=None))
    assert got["unshare_user"] == 0 and got["keyctl"] == 0
    assert got["clone3"] == errno.EINVAL  # reached the kernel, which disliked size 0


def test_localhost_profile_denying_mkdir_fails_with_the_configured_errno(workdir: Path) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}]}
    path = workdir / "deny-mkdir.json"
    path.write_text(json.dumps(profile))
    loaded = seccomp.load_localhost_profile(str(path), "localhost_ref")
    target = workdir / "made"
    r = run(make_spec(profile=loaded), ["/bin/mkdir", str(target)])
    assert r.returncode != 0 and os.strerror(errno.EROFS) in r.stderr
    assert not target.exists()
    (workdir / "gone").mkdir()
    r = run(make_spec(profile=loaded), ["/bin/rmdir", str(workdir / "gone")])
    assert r.returncode == 0 and not (workdir / "gone").exists()
    r = run(make_spec(profile=None), ["/bin/mkdir", str(target)])
    assert r.returncode == 0 and target.is_dir()


# ---------------------------------------------------------------- sysctls


def test_sysctls_are_written_in_the_pods_namespaces_only() -> None:
    host_port_start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    host_rmid = Path("/proc/sys/kernel/shm_rmid_forced").read_text()
    spec = make_spec(sysctl={"net.ipv4.ip_unprivileged_port_start": "77", "kernel.shm_rmid_forced": "1"})
    setup = [{"unshare": CLONE_NEWNET | CLONE_NEWIPC}, {"sysctls": "/proc/sys"}]
    r = run(spec, ["/bin/cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start", "/proc/sys/kernel/shm_rmid_forced"],
            setup=setup)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["77", "1"]
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host_port_start
    assert Path("/proc/sys/kernel/shm_rmid_forced").read_text() == host_rmid


def test_sysctl_of_host_network_is_refused_at_prepare() -> None:
    spec = make_spec(sysctl={"net.ipv4.ip_forward": "1"})
    spec["linux"]["namespaces"] = [{"type": "mount"}]
    r = run(spec, ["/bin/true"])
    assert r.returncode == 3 and "host network namespace" in r.stdout


# ---------------------------------------------------------------- masked and read-only paths


def test_masked_file_reads_empty_masked_dir_is_empty_and_read_only(workdir: Path) -> None:
    root = make_root(workdir)
    (root / "dev/null").write_text("")
    script = (f"cat {root}/secret; echo '|'; ls -A {root}/dir/sub; echo '|'; "
              f"touch {root}/dir/sub/y 2>&1; touch {root}/ro/new 2>&1; cat {root}/dir/sub/x 2>&1; true")
    r = masked_run(root, [{"bind": ["/dev/null", str(root / "dev/null")]}], script,
                   maskedPaths=["/secret", "/dir/sub", "/missing/path"], readonlyPaths=["/ro"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["|", "|"]  # nothing from the file, nothing in the dir
    assert "Read-only file system" in lines[2] and "Read-only file system" in lines[3]
    assert "No such file" in lines[4]
    # Outside the private mount namespace nothing changed.
    assert (root / "secret").read_text() == "s3cret" and (root / "dir/sub/x").exists()


def test_empty_lists_mean_unmasked(workdir: Path) -> None:
    root = make_root(workdir)
    r = masked_run(root, [], f"cat {root}/secret", maskedPaths=[], readonlyPaths=[])
    assert r.returncode == 0 and r.stdout == "s3cret"


def test_socket_module_still_works_under_runtime_default() -> None:
    r = run(make_spec(), [PYTHON, "-c", "import socket; a, b = socket.socketpair(); a.send(b'x'); print(b.recv(1))"])
    assert r.stdout.strip() == "b'x'", r.stderr
    assert socket.AF_INET == 2


def test_apply_imports_nothing_in_the_child() -> None:
    r = run(make_spec(uid=1000, gid=1000), ["/bin/true"], check_imports=True)
    assert r.returncode == 0, r.stderr
