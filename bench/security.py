"""What process security costs: prepare (parent) and apply (child) against a bare fork+exec.

    python -m bench.security [-n 200]

Prints p50/p99 in milliseconds and the ratio of fork+apply+exec to fork+exec.
Run as root (apply drops capabilities and switches user). Numbers only; no assertion.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from runtime.linux import capabilities, process_security, seccomp


def spec(uid: int) -> dict[str, object]:
    caps = capabilities.oci_capabilities(None, privileged=False, uid=uid)
    return {"process": {"user": {"uid": uid, "gid": uid, "additionalGids": [uid]}, "capabilities": caps,
                        "noNewPrivileges": True},
            "linux": {"seccomp": seccomp.runtime_default_profile(caps["bounding"]),
                      "namespaces": [{"type": "network"}, {"type": "ipc"}]}}


def timed(n: int, action: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        action()
        out.append((time.perf_counter() - t) * 1000)
    return out


def spawn(prepared: process_security.PreparedSecurity | None) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            if prepared is not None:
                process_security.apply(prepared)
            os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("child failed")


def line(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"{name:<34} p50 {statistics.median(samples):7.3f} ms   p99 {q[98]:7.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    n = parser.parse_args().n
    s = spec(1000)
    prepared = process_security.prepare(s)
    print(f"RuntimeDefault filter: {prepared.seccomp.instructions if prepared.seccomp else 0} BPF instructions")
    print(line("prepare (validate + compile)", timed(n, lambda: process_security.prepare(s))))
    cache = seccomp.FilterCache()
    print(line("prepare with a warm FilterCache", timed(n, lambda: process_security.prepare(s, cache=cache))))
    bare = timed(n, lambda: spawn(None))
    secured = timed(n, lambda: spawn(prepared))
    print(line("fork + exec /bin/true", bare))
    print(line("fork + apply + exec /bin/true", secured))
    print(f"ratio apply/bare (p50): {statistics.median(secured) / statistics.median(bare):.2f}")


if __name__ == "__main__":
    main()
