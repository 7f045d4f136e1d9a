"""The daemon starts and serves in Windows mode with the POSIX-only modules gone (as on a Windows node).

A child interpreter blocks fcntl, pwd, grp, termios, resource, pty, tty, pyroute2
and runtime.linux (tests/harness/not_windows.py), then runs
`app.Daemon(windows_host=True)` on the fake HCS and drives it over gRPC:
Status, a HostProcess pod, stats/metrics/RuntimeConfig/ImageFsInfo, PullImage
of a windows/amd64 image (imported into layer folders by the image store) and
the pod's removal. Every import the
blocker refused is reported, so a Linux-only import reached at run time (not
only at import time) fails here. Still not shown (windows_only, README): the
real DLLs, the named pipe, the service host.
"""

from __future__ import annotations

import json
import shutil

from cri_shim.api import api_pb2 as pb
from tests.harness import imagebuild as ib
from tests.harness import not_windows
from tests.harness.daemon import make_workdir, toml
from tests.harness.registry import LocalRegistry, free_port
from tests.windows.test_image_layers import APP, BASE, windows_image


def test_the_windows_mode_daemon_runs_a_pod_and_pulls_a_windows_image_without_linux_modules(
        registry: LocalRegistry) -> None:
    ib.push(windows_image(BASE, APP), registry.host, "winstart/servercore", "ltsc2022")
    image = f"{registry.host}/winstart/servercore:ltsc2022"
    workdir = make_workdir("winstart")
    port = free_port()
    (workdir / "cni").mkdir()
    (workdir / "hosts" / registry.host).mkdir(parents=True)
    (workdir / "hosts" / registry.host / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    config = workdir / "config.toml"
    config.write_text(toml({
        "server": {"socket": str(workdir / "run" / "cri-shim.sock"), "root": str(workdir / "root"),
                   "state": str(workdir / "s"), "shutdown_timeout": 5},
        "network": {"cni_conf_dir": str(workdir / "cni")},
        "registry": {"config_path": str(workdir / "hosts")},
        "images": {"platform": "windows/amd64"},   # what platform.host() says on a Windows node
        "windows": {"test_fake_hcs": str(workdir / "fake-hcs"), "grpc_port": port, "pipe": "",
                    "owner": "cst-winwire-start"},
    }))
    try:
        done = not_windows.run_module("tests.windows.windows_mode_child", str(config), str(port), image)
        assert done.returncode == 0, done.stderr[-4000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["blocked"] == [] and out["linux_modules"] == []
        assert out["handlers"] == ["", "runhcs-wcow-hypervisor", "runhcs-wcow-process"]
        assert out["runtime_ready"] == [True]
        [(network_ready, message)] = out["network"]   # no CNI config here, and no built-in network on Windows
        assert not network_ready and "exists only on Linux nodes" in message
        assert out["pod_state"] == pb.SANDBOX_READY and out["pods_left"] == 0
        assert out["image_ref"].startswith("sha256:") and out["image_size"] > 0
        assert out["imagefs"] == 1
        folders = sorted(p.parent.name for p in (workdir / "root" / "snapshots").rglob("Files"))
        assert len(folders) == 2                      # both layers imported as Windows layer folders
        report = json.loads((workdir / "fake-hcs" / "fake-hcs.json").read_text())
        assert report["problems"] == []
        assert not (workdir / "run").exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
