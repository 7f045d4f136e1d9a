"""A stand-in for the daemon process in restart tests: `python -m tests.harness.linux_driver <json>`.

It makes a LinuxBackend, runs the steps it is given, prints one JSON line per
result and then waits to be killed with SIGKILL (what the tests do to it).
Steps: {"op": "pod"} | {"op": "container", "pod": <id>, "args": [...], "mounts": [[dst, src]]}
| {"op": "recover", "pods": [...]} | {"op": "create_only", ...same as container...}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from runtime import base, oci
from tests.harness.linux_lab import Lab, PodInfo


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run(cfg: dict[str, Any]) -> None:
    lab = Lab.reopen(Path(cfg["root"]), Path(cfg["rootfs"]))
    b = lab.backend()
    pods: dict[str, PodInfo] = {}
    for step in cfg["steps"]:
        op = step["op"]
        if op == "pod":
            pod = await lab.pod(b, hostname="restart-pod")
            pods[pod.id] = pod
            emit({"pod": pod.id, "pod_dir": str(pod.dir), "cgroup_parent": pod.cgroup_parent,
                  "namespaces": dict(pod.status.namespaces), "netns": pod.netns})
        elif op == "recover":
            recovered = await b.recover(step["pods"])
            emit({"recovered": [{"id": r.status.id, "state": r.status.state.value,
                                 "containers": {c.id: [c.state.value, c.exit_code] for c in r.containers}}
                                for r in recovered]})
            for r in recovered:
                pods[r.status.id] = PodInfo(id=r.status.id, dir=Path(step["pod_dirs"][r.status.id]), netns=None,
                                            cgroup_parent=step["cgroup_parents"][r.status.id], status=r.status)
        elif op in ("container", "create_only"):
            pod = pods[step["pod"]]
            mounts = tuple(oci.Mount(dst, src, "bind", ("rbind",)) for dst, src in step.get("mounts", []))
            if op == "create_only":
                # Ask for a create and get killed before the answer: the shim finishes it regardless.
                task = asyncio.ensure_future(lab.container(b, pod, tuple(step["args"]), start=False, mounts=mounts))
                emit({"creating": True})
                await asyncio.sleep(3600)
                del task
            c = await lab.container(b, pod, tuple(step["args"]), mounts=mounts)
            status = await b.container_status(c.id)
            emit({"container": c.id, "pid": status.pid, "log": str(c.log_path), "scratch": str(c.scratch)})
    emit({"done": time.time()})
    await asyncio.sleep(3600)
    del base


if __name__ == "__main__":
    asyncio.run(run(json.loads(sys.argv[1])))
