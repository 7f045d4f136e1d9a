"""One named regression test per container-runtime CVE class this library defends against (issue 5).

Each test drives the real kernel through `process_security` / `masked_paths` /
`root_paths` / `users` / `sysctls` exactly as the container init will, and
pairs the defended run with a contrast that shows the attack would have
worked without the defence, so none can pass vacuously.

Still to come with the pod shim (they need a whole container): CVE-2022-4318
(newline in HOME must not reach /etc/passwd) and end-to-end variants of the
mount-destination tests through CreateContainer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.base import InvalidSpec
from runtime.linux import capabilities, root_paths, users
from tests.harness.secure_exec import REPO, run
from tests.harness.security_specs import CLONE_NEWNS, caps_of, make_root, make_spec, masked_run, status_of

CAP_NET_RAW = 1 << 13


# ---------------------------------------------------------------- CVE-2024-21626: leaked fds, cwd outside root


def test_cve_2024_21626_leaked_fds_and_cwd_outside_the_root(workdir: Path) -> None:
    setup = [{"leak_fd": str(workdir)}]
    r = run(make_spec(), ["/bin/sh", "-c", "ls -l /proc/$$/fd"], setup=setup)
    assert r.returncode == 0, r.stderr
    assert str(workdir) not in r.stdout
    contrast = run(make_spec(), ["/bin/sh", "-c", "ls -l /proc/$$/fd"], setup=setup, keep_leaked=True)
    assert str(workdir) in contrast.stdout

    root = workdir / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (workdir / "outside").mkdir()
    escape = [{"unshare": CLONE_NEWNS}, {"chdir": str(workdir / "outside")}, {"chroot": str(root)}]
    r = run(make_spec(), ["/bin/busybox", "pwd"], setup=escape)
    assert r.returncode == 4 and "outside the container's root" in r.stderr
    r = run(make_spec(), ["/bin/busybox", "pwd"], setup=[*escape, {"chdir": "/"}])
    assert r.returncode == 0 and r.stdout == "/\n", r.stderr


# ---------------------------------------------------------------- CVE-2019-5736: /proc/<init>/exe


# The victim holds no more capabilities than the prober (else the kernel's capability-subset rule alone
# would refuse access), so dumpable is the only thing that differs between the two runs.
VICTIM = ("import sys\nfrom runtime.linux import capabilities as c, libc_calls\n"
          "from runtime.linux.process_security import set_dumpable\n"
          "m = c.mask(c.DEFAULT_CAPABILITIES)\nlibc_calls.capset(m, m, 0)\n"
          "set_dumpable(sys.argv[1] == '1')\nprint('ready', flush=True)\nsys.stdin.read()\n")


def exe_readable_from_container(dumpable: bool) -> tuple[int, str]:
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, "1" if dumpable else "0"], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None and victim.stdout.readline() == "ready\n"
        r = run(make_spec(), ["/bin/busybox", "readlink", f"/proc/{victim.pid}/exe"])
        return r.returncode, r.stdout
    finally:
        victim.kill()
        victim.wait()


def test_cve_2019_5736_init_is_not_dumpable_so_its_exe_cannot_be_opened() -> None:
    # A container process (default capabilities: no CAP_SYS_PTRACE) cannot reach the host binary behind a
    # non-dumpable init's /proc/<pid>/exe; the init calls set_dumpable(False) until its execve.
    code, out = exe_readable_from_container(dumpable=False)
    assert code != 0 and out == ""
    code, out = exe_readable_from_container(dumpable=True)
    assert code == 0 and "python" in out


# ---------------------------------------------------------------- CVE-2021-30465 / CVE-2022-23648: mount destinations


def test_cve_2021_30465_symlinked_mount_destination_stays_in_the_root(workdir: Path) -> None:
    host_dir = workdir / "host-dir"
    host_dir.mkdir()
    root = workdir / "root"
    root.mkdir()
    (root / "data").symlink_to(host_dir)  # the image aims /data at a host path
    r = run(make_spec(), ["/bin/busybox", "ls", str(host_dir), str(root) + str(host_dir)],
            setup=[{"unshare": CLONE_NEWNS}, {"mount_in_root": [str(root), "/data"]}])
    assert r.returncode == 0, r.stderr
    host_listing, inside_listing = r.stdout.split("\n\n")
    assert "mounted" not in host_listing and "mounted" in inside_listing
    # Contrast: a runtime following the link by name would mount over the host directory.
    fd = os.open(root / "data", os.O_PATH)  # what a naive open does
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(host_dir)
    finally:
        os.close(fd)


def test_cve_2022_23648_image_volume_path_resolves_inside_the_root(workdir: Path) -> None:
    root = workdir / "root"
    root.mkdir()
    (root / "vol").symlink_to("../../../../../../etc")  # VOLUME /vol/ssl in the image config
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = root_paths.mkdirs_in_root(root_fd, "/vol/ssl")
        resolved = os.readlink(f"/proc/self/fd/{fd}")
        os.close(fd)
        with pytest.raises(OSError):
            root_paths.mkdirs_in_root(root_fd, "/vol/../../etc")
    finally:
        os.close(root_fd)
    assert resolved == str(root / "etc/ssl")
    assert os.path.realpath(root / "vol") == "/etc"  # contrast: the host's view of the same path


# ---------------------------------------------------------------- CVE-2022-29162: inheritable capabilities


def test_cve_2022_29162_inheritable_capabilities_are_emptied(workdir: Path) -> None:
    spec = make_spec(uid=1000, gid=1000)
    assert spec["process"]["capabilities"]["inheritable"] == []
    st = status_of(spec, setup=[{"inherit": CAP_NET_RAW}])
    assert caps_of(st, "CapInh") == 0
    # Contrast: a spec that carries inheritable capabilities gets them, which is the bug's precondition.
    leaky = make_spec(uid=0)
    leaky["process"]["capabilities"]["inheritable"] = ["CAP_NET_RAW"]
    assert caps_of(status_of(leaky), "CapInh") == CAP_NET_RAW


# ---------------------------------------------------------------- CVE-2019-19921 / CVE-2025-31133: /proc, /dev/null


def test_cve_2019_19921_proc_replaced_by_a_symlink_is_refused(workdir: Path) -> None:
    root = workdir / "root"
    (root / "fake").mkdir(parents=True)
    (root / "proc").symlink_to("/fake")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match="symlink"):
            root_paths.procfs_target(root_fd, "/proc")
        fd = root_paths.mkdirs_in_root(root_fd, "/proc")  # contrast: ordinary resolution follows it
        assert os.readlink(f"/proc/self/fd/{fd}") == str(root / "fake")
        os.close(fd)
    finally:
        os.close(root_fd)


@pytest.mark.parametrize("replace", ["regular-file", "symlink", "other-device"])
def test_cve_2025_31133_dev_null_replaced_is_never_a_mask_source(workdir: Path, replace: str) -> None:
    root = make_root(workdir)
    null = root / "dev/null"
    if replace == "regular-file":
        null.write_text("")
    elif replace == "symlink":
        null.symlink_to("/dev/null")
    else:
        os.mknod(null, 0o666 | 0o020000, os.makedev(1, 5))  # /dev/zero's numbers
    r = masked_run(root, [], f"cat {root}/secret", maskedPaths=["/secret"])
    assert r.returncode == 4 and "APPLY-ERROR" in r.stderr and "/dev/null" in r.stderr
    assert r.stdout == ""
    ok_root = make_root(workdir / "ok")  # contrast: the real device masks the file
    (ok_root / "dev/null").write_text("")
    r = masked_run(ok_root, [{"bind": ["/dev/null", str(ok_root / "dev/null")]}], f"cat {ok_root}/secret",
                   maskedPaths=["/secret"])
    assert r.returncode == 0 and r.stdout == ""


def test_masked_path_symlink_cannot_aim_the_mask_at_the_host(workdir: Path) -> None:
    host_file = workdir / "host-file"
    host_file.write_text("HOST")
    root = make_root(workdir)
    (root / "dev/null").write_text("")
    (root / "link").symlink_to(host_file)
    r = masked_run(root, [{"bind": ["/dev/null", str(root / "dev/null")]}], f"cat {host_file}",
                   maskedPaths=["/link"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "HOST"


# ---------------------------------------------------------------- CVE-2022-0811: sysctl injection


def test_cve_2022_0811_sysctl_injection_is_rejected() -> None:
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    spec = make_spec(sysctl={"kernel.shm_rmid_forced": "1+kernel.core_pattern=|/tmp/cri-shim-pwn"})
    r = run(spec, ["/bin/true"], setup=[{"sysctls": "/proc/sys"}])
    assert r.returncode == 3 and "forbidden character" in r.stdout
    spec = make_spec(sysctl={"kernel.core_pattern": "|/tmp/cri-shim-pwn"})
    r = run(spec, ["/bin/true"], setup=[{"sysctls": "/proc/sys"}])
    assert r.returncode == 3 and "not a namespaced sysctl" in r.stdout
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern


# ---------------------------------------------------------------- CVE-2024-40635: uid overflow


def test_cve_2024_40635_uid_beyond_32_bits_never_becomes_root(workdir: Path) -> None:
    (workdir / "etc").mkdir()
    (workdir / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    for image_user in ("4294967296", "4294967296:0", "0:4294967296", "4294967295"):
        with pytest.raises(InvalidSpec):
            users.resolve_user(str(workdir), users.UserRequest(image_user=image_user))
    r = run(make_spec(uid=2**32), ["/bin/busybox", "id", "-u"])
    assert r.returncode == 3 and "process.user.uid" in r.stdout
    st = status_of(make_spec(uid=2**32 - 2, gid=2**32 - 2))  # contrast: the largest valid id works
    assert st["Uid"].split()[0] == str(2**32 - 2)


# ---------------------------------------------------------------- CVE-2023-25173: supplementary groups


@pytest.mark.parametrize("policy, groups", [("Merge", ["1000", "1234", "50000"]), ("Strict", ["1000", "1234"])])
def test_cve_2023_25173_supplementary_groups_from_the_image_are_applied(workdir: Path, policy: str,
                                                                       groups: list[str]) -> None:
    (workdir / "etc").mkdir()
    (workdir / "etc/passwd").write_text("u:x:1000:1000::/home/u:/bin/sh\n")
    (workdir / "etc/group").write_text("u:x:1000:u\nimage-group:x:50000:u\n")
    st = status_of(make_spec(), rootfs=str(workdir),
                   user={"run_as_user": 1000, "supplemental_groups": [1234], "policy": policy})
    assert st["Groups"].split() == groups
    assert capabilities.DEFAULT_CAPABILITIES  # the spec is a normal container's
