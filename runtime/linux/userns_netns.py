"""Helper process: a pod network namespace owned by the pod's new user namespace.

Why: in a pod with a user namespace, the container's root has capabilities only inside that user
namespace. If the pod's network namespace belonged to the host's, that root could not bind low ports,
ping, or configure its own network (CAP_NET_*), unlike in any other pod. So, as containerd does, the
netns of such a pod is created inside the user namespace; the user namespace lives as long as the
netns (a namespace holds a reference to its owner), so the netns pin is the only thing to clean up.
The pod shim finds the user namespace again from the netns (NS_GET_USERNS) and pins it for its
containers.

Why a helper process: unshare(CLONE_NEWUSER) refuses multithreaded callers, and the daemon has threads
and never forks without exec. The daemon (runtime.linux.netns.create_in_new_userns_async) runs
`python -S -m runtime.linux.userns_netns PIN UIDMAP GIDMAP`, single-threaded and importing nothing
heavy (it is on the pod start path): it forks a child that unshares user+network namespaces in one
call (the kernel makes the user namespace first and gives it the new netns), writes the child's
uid_map/gid_map as host root, bind-mounts the child's netns onto PIN (an existing empty file) and lets
the child go. The daemon then brings loopback up.
"""

from __future__ import annotations

import os
import sys

from runtime.linux import syscalls as sc


def _make(pin: str, uid_map: str, gid_map: str) -> None:
    with sc.unshared_child(sc.CLONE_NEWUSER | sc.CLONE_NEWNET, {"uid_map": uid_map, "gid_map": gid_map}) as pid:
        sc.mount(f"/proc/{pid}/ns/net", pin, None, sc.MS_BIND)


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
