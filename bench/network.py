"""Pod network setup time: the built-in network against the CNI bridge plugins, same machine, interleaved.

    sudo .venv/bin/python -m bench.network [--pods 100]

Each sample makes a pinned netns, runs setup (timed), then teardown (timed) and
removes the netns. Prints p50/p90/p99 in milliseconds for both networks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from cri_shim.config import Config, NetworkConfig, ServerConfig
from cri_shim.network.manager import PodNetworkManager
from cri_shim.store.db import MetadataStore
from runtime.linux import netns

CONFLIST = {"cniVersion": "1.0.0", "name": "bench-cni", "plugins": [
    {"type": "bridge", "bridge": "bnchcni0", "isGateway": True, "ipMasq": True,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.217.0.0/16"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


def manager(work: Path, mode: str) -> PodNetworkManager:
    conf = work / f"conf-{mode}"
    conf.mkdir()
    if mode == "cni":
        (conf / "10-bench.conflist").write_text(json.dumps(CONFLIST))
    root = work / f"root-{mode}"
    root.mkdir()
    cfg = Config(server=ServerConfig(root=str(root)),
                 network=NetworkConfig(mode=mode, cni_conf_dir=str(conf), cni_bin_dirs=["/usr/lib/cni"],
                                       builtin_subnet="10.218.0.0/16", builtin_bridge="bnchbr0",
                                       nft_table="bench_builtin"))
    return PodNetworkManager(cfg, MetadataStore.open(root / "meta.db"))


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(p / 100 * len(values)))]


async def sample(net: PodNetworkManager, work: Path, i: int) -> tuple[float, float]:
    sid, ns = f"{i:064x}", work / f"ns{i}"
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=f"p{i}", namespace="bench", uid=str(i)),
                                 port_mappings=[pb.PortMapping(container_port=80, host_port=20000 + i % 1000)])
    netns.create(ns)
    t0 = time.perf_counter()
    await net.setup(sid, str(ns), config)
    t1 = time.perf_counter()
    await net.teardown(sid, str(ns), config)
    t2 = time.perf_counter()
    netns.remove(ns)
    return (t1 - t0) * 1000, (t2 - t1) * 1000


async def run(pods: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-network-"))
    try:
        nets = {"builtin": manager(work, "builtin"), "cni": manager(work, "cni")}
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in nets}
        for i in range(pods):
            for name, net in nets.items():  # interleaved so machine drift hits both
                up, down = await sample(net, work, i)
                times[name][0].append(up)
                times[name][1].append(down)
        print(f"pod network, {pods} pods each (ms)      p50     p90     p99")
        for name, (ups, downs) in times.items():
            for what, values in (("setup", ups), ("teardown", downs)):
                print(f"  {name:8} {what:9}              {pct(values, 50):7.2f} {pct(values, 90):7.2f} "
                      f"{pct(values, 99):7.2f}")
        ratio = statistics.median(times["builtin"][0]) / statistics.median(times["cni"][0])
        print(f"  built-in / CNI setup p50 ratio: {ratio:.2f}")
    finally:
        subprocess.run(["ip", "link", "del", "bnchbr0"], capture_output=True)
        subprocess.run(["ip", "link", "del", "bnchcni0"], capture_output=True)
        subprocess.run(["nft", "delete", "table", "ip", "bench_builtin"], capture_output=True)
        shutil.rmtree("/var/lib/cni/networks/bench-cni", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    asyncio.run(run(ap.parse_args().pods))


if __name__ == "__main__":
    main()
