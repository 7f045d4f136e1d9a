"""A small warm parent that forks pod shims: `python -m runtime.linux.zygote <socket>`.

The daemon must never fork (gRPC threads), and a fresh interpreter per pod
costs ~13 MiB and ~30 ms. So the daemon execs this zygote once; it imports
the shim code, freezes the heap (gc.freeze, so collections do not dirty the
shared pages) and, for each `spawn` request, forks twice: the intermediate
child starts a new session and exits, the grandchild becomes the pod shim
(reparented away from the zygote, so neither the zygote nor the daemon dying
affects it). The shim answers the daemon on the very connection the request
came in on, which it inherited; the zygote closes its copy at once and never
waits for a pod, so spawns do not queue behind each other. With `ksm` it marks
its memory mergeable before serving (see serve), so the shims inherit that.

Single-threaded, imports no grpc.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
from typing import Any, NoReturn

from runtime.linux import protocol as proto
from runtime.linux import shim
from runtime.linux import syscalls as sc

log = logging.getLogger("cri-shim.zygote")


def serve(sock_path: str, ksm: bool) -> NoReturn:
    listener = proto.new_socket()
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    listener.bind(sock_path)
    os.chmod(sock_path, 0o600)
    listener.listen(128)
    with open(sock_path + ".pid", "w") as f:
        f.write(str(os.getpid()))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    host = shim.warm_up()
    gc.collect()
    gc.freeze()  # every object so far is shared with the shims: keep the collector's hands off them
    if ksm:
        # The pages each shim copies only because CPython wrote a reference count into them mostly end up
        # equal to the zygote's again (or to another shim's); on a node running KSM they are merged back.
        log.info("marked %d MiB mergeable (KSM)", sc.mark_mergeable() >> 20)
    while True:
        conn, _ = listener.accept()
        try:
            handle(listener, conn, ksm, host)
        except Exception:  # noqa: BLE001 - one bad request must not take the zygote down
            log.exception("request failed")
        finally:
            conn.close()


def handle(listener: socket.socket, conn: socket.socket, ksm: bool, host: shim.HostFacts) -> None:
    msg, fds = proto.recv(conn)
    for fd in fds:
        os.close(fd)
    if msg is None:
        return
    if msg.get("v") != proto.VERSION:
        proto.send(conn, proto.error(proto.FAILURE, f"zygote speaks protocol {proto.VERSION}"))
        return
    op = msg.get("op")
    if op == "ping":
        proto.send(conn, proto.ok(pid=os.getpid(), version=proto.VERSION, ksm=ksm))
    elif op == "spawn":
        spawn(listener, conn, msg.get("config") or {}, host)
    elif op == "stop":
        proto.send(conn, proto.ok())
        os._exit(0)
    else:
        proto.send(conn, proto.error(proto.FAILURE, f"unknown zygote operation {op!r}"))


def spawn(listener: socket.socket, conn: socket.socket, config: dict[str, Any], host: shim.HostFacts) -> None:
    pid = sc.fork()   # the zygote has one thread: no fork protocol (see syscalls.fork)
    if pid == 0:
        try:
            listener.close()
            os.setsid()
            if sc.fork() != 0:
                os._exit(0)
            shim.run_pod(config, conn, host)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)  # the intermediate child exits at once


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3, 4) or argv[3:] not in ([], ["ksm"]):
        sys.stderr.write("usage: python -m runtime.linux.zygote <socket> [log level] [ksm]\n")
        sys.exit(2)
    level = (argv[2] if len(argv) >= 3 else "warning").upper()
    # One handler for the zygote and every shim it forks (a per-pod handler would cost each shim
    # ~1 MiB of unshared pages); %(process)d tells the shims apart (their pid is in shim.pid).
    logging.basicConfig(level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "WARNING",
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    sc.set_process_name("cri-shim-zygote")
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    serve(argv[1], ksm=argv[3:] == ["ksm"])


if __name__ == "__main__":
    main(sys.argv)
