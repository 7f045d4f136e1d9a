"""Run a command under `process_security` the way the container init will: prepare, fork, apply, execve.

Used by the integration tests as a fresh interpreter (never a fork of pytest):

    python -m tests.harness.secure_exec < request.json

The request is {"spec": <OCI spec>, "argv": [...], "rootfs": null | path,
"user": null | {UserRequest fields}, "setup": [...]}. The parent prepares
(validation errors print "PREPARE-ERROR <message>" and exit 3), forks a
child that runs the setup steps the container init would run before it,
applies the security state and execs argv; the parent exits with the
child's status. A failure in the child prints "APPLY-ERROR ..." and exits 4.
Setup steps (in order): {"unshare": clone flags} (a new mount namespace is
made private at once, so nothing reaches the host), {"bind": [src, dst]},
{"sysctls": "/proc/sys"}, {"mask": root}, {"leak_fd": path} (opens it
inheritable, as a careless runtime would), {"chroot": path} (without chdir),
{"chdir": path}, {"inherit": mask} (raise these capabilities into the
inheritable set, as a parent with a sloppy set would), {"mount_in_root":
[root, path]} (a tmpfs at `path` resolved inside `root` through
runtime.linux.root_paths, with a file "mounted" in it). With "keep_leaked" the leaked fds are passed as keep_fds;
with "check_imports" the child fails if `apply` imported any module.
`run()` drives it from a test.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18


def _user_request(raw: dict[str, Any] | None) -> Any:
    from runtime.linux import users

    if raw is None:
        return None
    policy = users.GroupsPolicy(raw.pop("policy", "Merge"))
    raw["supplemental_groups"] = tuple(raw.get("supplemental_groups", ()))
    return users.UserRequest(policy=policy, **raw)


def _setup(steps: list[dict[str, Any]], prepared: Any) -> list[int]:
    from runtime.linux import masked_paths, sysctls

    libc = ctypes.CDLL(None, use_errno=True)
    leaked = []
    for step in steps:
        if "unshare" in step:
            if libc.unshare(step["unshare"]) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            if step["unshare"] & CLONE_NEWNS and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                raise OSError(ctypes.get_errno(), "make / private")
        elif "bind" in step:
            src, dst = (os.fsencode(p) for p in step["bind"])
            if libc.mount(src, dst, None, MS_BIND, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind {step['bind']}")
        elif "sysctls" in step:
            sysctls.write_sysctls(prepared.sysctls, step["sysctls"])
        elif "mask" in step:
            masked_paths.mask_paths(step["mask"], prepared.masked_paths, prepared.readonly_paths)
        elif "leak_fd" in step:
            fd = os.open(step["leak_fd"], os.O_RDONLY)
            os.set_inheritable(fd, True)
            leaked.append(fd)
        elif "chroot" in step:
            os.chroot(step["chroot"])
        elif "chdir" in step:
            os.chdir(step["chdir"])
        elif "inherit" in step:
            from runtime.linux import libc_calls

            eff, perm, inh = libc_calls.capget()
            libc_calls.capset(eff, perm, inh | step["inherit"])
        elif "mount_in_root" in step:
            _mount_tmpfs_in_root(*step["mount_in_root"])
    return leaked


def _mount_tmpfs_in_root(root: str, path: str) -> None:
    from runtime.linux import libc_calls, root_paths

    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    target = root_paths.mkdirs_in_root(root_fd, path)
    ctx = libc_calls.fsopen("tmpfs")
    libc_calls.fsconfig(ctx, libc_calls.FSCONFIG_CMD_CREATE)
    mnt = libc_calls.fsmount(ctx, 0)
    libc_calls.move_mount(mnt, target)
    marker = os.open("mounted", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=mnt)
    for fd in (marker, mnt, ctx, target, root_fd):
        os.close(fd)


def main() -> int:
    from runtime.base import RuntimeFailure
    from runtime.linux import process_security

    request = json.load(sys.stdin)
    try:
        prepared = process_security.prepare(request["spec"], request.get("rootfs"),
                                            _user_request(request.get("user")))
    except RuntimeFailure as e:
        print(f"PREPARE-ERROR {e.message}", flush=True)
        return 3
    argv = request["argv"]
    pid = os.fork()
    if pid == 0:
        try:
            leaked = _setup(request.get("setup") or [], prepared)
            before = set(sys.modules)
            process_security.apply(prepared, leaked if request.get("keep_leaked") else ())
            if request.get("check_imports") and set(sys.modules) != before:
                raise RuntimeError(f"apply imported {sorted(set(sys.modules) - before)}")
            os.execv(argv[0], argv)
        except BaseException as e:  # the child must never return into the parent's code
            os.write(2, f"APPLY-ERROR {e}\n".encode())
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(spec: dict[str, Any], argv: list[str], *, rootfs: str | None = None,
        user: dict[str, Any] | None = None, setup: list[dict[str, Any]] | None = None,
        keep_leaked: bool = False, check_imports: bool = False,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    request = {"spec": spec, "argv": argv, "rootfs": rootfs, "user": user, "setup": setup or [],
               "keep_leaked": keep_leaked, "check_imports": check_imports}
    return subprocess.run([sys.executable, "-m", "tests.harness.secure_exec"], input=json.dumps(request),
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, check=False)


if __name__ == "__main__":
    sys.exit(main())
