"""A pod network namespace owned by the pod's new user namespace.

Why: in a pod with a user namespace, the container's root has capabilities only inside that user
namespace. If the pod's network namespace belonged to the host's, that root could not bind low ports,
ping, or configure its own network (CAP_NET_*), unlike in any other pod. So, as containerd does, the
netns of such a pod is created inside the user namespace; the user namespace lives as long as the
netns (a namespace holds a reference to its owner), so the netns pin is the only thing to clean up.
The pod shim finds the user namespace again from the netns (NS_GET_USERNS) and pins it for its
containers.

Why a helper process: unshare(CLONE_NEWUSER) refuses multithreaded callers, and the daemon has threads
and never forks without exec. The daemon runs `python -m runtime.linux.userns_netns PIN UIDMAP GIDMAP`
(single-threaded); it forks a child that unshares user+network namespaces in one call (the kernel makes
the user namespace first and gives it the new netns), writes the child's uid_map/gid_map as host root,
bind-mounts the child's netns onto PIN, brings loopback up from inside, and lets the child go.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from runtime.linux import netns
from runtime.linux import syscalls as sc

HELPER_TIMEOUT = 20.0


def map_line(ranges: list[tuple[int, int, int]]) -> str:
    """uid_map text: "container host size" per range."""
    return "".join(f"{inside} {outside} {size}\n" for inside, outside, size in ranges)


async def create_async(path: Path, uid_ranges: list[tuple[int, int, int]],
                       gid_ranges: list[tuple[int, int, int]]) -> Path:
    """A new netns at `path` (a new file) owned by a new user namespace with these mappings. On failure
    nothing is left (no mount, no file) and NetnsFailure says why."""
    netns.prepare_pin_file(path)
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": repo_root,
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-m", "runtime.linux.userns_netns", str(path), map_line(uid_ranges),
            map_line(gid_ranges), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/", start_new_session=True)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), HELPER_TIMEOUT)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise netns.NetnsFailure(f"cannot create the pod's network namespace in a user namespace: {reason[0]}")
    except BaseException:
        netns.remove(path)
        raise
    return path


def _make(pin: str, uid_map: str, gid_map: str) -> None:
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNET)
            os.write(ready_w, b"n")
            os.read(done_r, 1)   # EOF when the parent is done (or gone)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"n":
            raise OSError("unshare(CLONE_NEWUSER|CLONE_NEWNET) failed (is user.max_user_namespaces 0?)")
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            try:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(text)
            except OSError as e:
                raise OSError(f"the kernel refused {name} {text.strip()!r}: {e.strerror}") from None
        sc.mount(f"/proc/{pid}/ns/net", pin, None, sc.MS_BIND)
        fd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.CLONE_NEWNET)   # host root may: it owns the new user namespace
        finally:
            os.close(fd)
        netns.set_loopback_up()
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: python -m runtime.linux.userns_netns PIN UIDMAP GIDMAP\n")
        return 2
    try:
        _make(*argv)
    except OSError as e:
        sys.stderr.write(f"{e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
