"""A real cri-shim daemon whose Windows handlers run on the fake HCS (the test-only `windows.test_fake_hcs`).

What is real: the daemon process, its gRPC server, crictl, the lifecycle
services, the image store pulling from a local registry, the CNI invocation,
WindowsBackend and the ctypes binding. What is fake, because it only exists on
Windows: computecore.dll (the HCS state machine of runtime/windows/testing,
which validates every document against the official schema), HCN, the wcifs
layer mounter, job objects, and the CNI plugin (`cst-winwire-cni`, a shell
script standing in for win-bridge/nat: it records its calls and hands out one
address). The "Windows image" is a linux/amd64 image laid out like a Windows
base layer (Files/, blank.vhdx, UtilityVM/): the fake layer mounter needs the
folders and blank.vhdx to exist, and only a real base-layer import on Windows
makes blank.vhdx (test_image_layers.py pulls real windows/amd64 layer tars).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_shim.api import api_pb2 as pb
from tests.harness import imagebuild as ib
from tests.harness.daemon import Daemon, new_daemon, toml
from tests.harness.registry import LocalRegistry

IMAGE_REPO = "winwire/servercore-fake"
IMAGE_TAG = "ltsc2022"
PLUGIN = "cst-winwire-cni"
POD_IP = "10.250.0.7"
CONFLIST = {"cniVersion": "1.0.0", "name": "cst-winwire", "plugins": [{"type": PLUGIN}]}
PLUGIN_SCRIPT = f"""#!/bin/sh
# Stands in for a Windows CNI plugin (win-bridge / nat need HNS): records the call, returns one address.
cat > /dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS" >> "$(dirname "$0")/calls.log"
case "$CNI_COMMAND" in
ADD) printf '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0"}}],"ips":[{{"address":"{POD_IP}/24","interface":0}}]}}' ;;
VERSION) printf '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}}' ;;
esac
"""
HANDLER_PROCESS = "runhcs-wcow-process"
HANDLER_HYPERV = "runhcs-wcow-hypervisor"


def fake_windows_image() -> ib.Image:
    base = ib.Layer(ib.tree([
        ib.file("Files/Windows/System32/cmd.exe", b"MZ fake"),
        ib.file("Files/Windows/System32/ping.exe", b"MZ fake"),
        ib.file("blank.vhdx", b"vhdx-template"),
        ib.file("UtilityVM/SystemTemplate.vhdx", b"uvm-template"),
        ib.dir_("UtilityVM/Files"),
        ib.file("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi", b"efi"),
    ]))
    app = ib.Layer(ib.tree([ib.file("Files/app/index.html", b"hello from a Windows layer\n")]))
    config = ib.ImageConfig(entrypoint=("ping", "-t", "localhost"), env=("PATH=C:\\Windows\\system32;C:\\Windows",),
                            working_dir="C:\\app")
    return ib.build_image(ib.ImageSpec(layers=(base, app), config=config))


def push_image(registry: LocalRegistry) -> str:
    ib.push(fake_windows_image(), registry.host, IMAGE_REPO, IMAGE_TAG)
    return f"{registry.host}/{IMAGE_REPO}:{IMAGE_TAG}"


@dataclass
class WinDaemon:
    daemon: Daemon
    image: str

    @property
    def report_dir(self) -> Path:
        return self.daemon.workdir / "fake-hcs"

    @property
    def plugin_log(self) -> Path:
        return self.daemon.workdir / "cnibin" / "calls.log"

    def cni_calls(self) -> list[list[str]]:
        if not self.plugin_log.exists():
            return []
        return [line.split(" ") for line in self.plugin_log.read_text().splitlines()]

    def report(self) -> dict[str, Any]:
        """What the fake saw; written when the daemon stops."""
        code = self.daemon.stop()
        assert code == 0, f"daemon exited with {code}:\n{self.daemon.log_tail()}"
        return json.loads((self.report_dir / "fake-hcs.json").read_text())  # type: ignore[no-any-return]

    def write(self, name: str, doc: dict[str, Any]) -> str:
        path = self.daemon.workdir / name
        path.write_text(json.dumps(doc))
        return str(path)

    def crictl(self, *args: str) -> str:
        return self.daemon.crictl(*args).stdout.strip()


def windows_daemon(registry: LocalRegistry, image: str, lifecycle: dict[str, Any] | None = None) -> WinDaemon:
    d = new_daemon(cni=False)
    hosts = d.workdir / "hosts"
    (hosts / registry.host).mkdir(parents=True)
    (hosts / registry.host / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    bindir = d.workdir / "cnibin"
    bindir.mkdir()
    plugin = bindir / PLUGIN
    plugin.write_text(PLUGIN_SCRIPT)
    os.chmod(plugin, 0o755)
    (d.cni_conf_dir / "10-cst-winwire.conflist").write_text(json.dumps(CONFLIST))
    config: dict[str, dict[str, Any]] = {
        "server": {"log_level": "debug", "metrics_address": "127.0.0.1:0", "shutdown_timeout": 5},
        "network": {"cni_conf_dir": str(d.cni_conf_dir), "cni_bin_dirs": [str(bindir)]},
        "registry": {"config_path": str(hosts)},
        "windows": {"test_fake_hcs": str(d.workdir / "fake-hcs"), "owner": "cst-winwire"},
    }
    if lifecycle:
        config["lifecycle"] = lifecycle
    d.config_path.write_text(toml(config))
    return WinDaemon(d, image)


def pod_config(name: str, *, host_process: bool = False, log_dir: Path | None = None) -> dict[str, Any]:
    """A Windows pod as crictl reads it (CRI JSON field names)."""
    doc: dict[str, Any] = {"metadata": {"name": name, "namespace": "winwire", "uid": f"uid-{name}", "attempt": 0},
                           "hostname": name}
    if log_dir is not None:
        doc["log_directory"] = str(log_dir)
    if host_process:
        doc["windows"] = {"security_context": {"host_process": True, "run_as_username": "NT AUTHORITY\\SYSTEM"}}
    else:
        doc["windows"] = {"security_context": {}}
    return doc


def container_config(name: str, image: str, *, host_process: bool = False, command: list[str] | None = None,
                     resources: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"metadata": {"name": name}, "image": {"image": image}, "log_path": f"{name}.log",
                           "windows": {"security_context": {"host_process": host_process}}}
    if command:
        doc["command"] = command
    if resources:
        doc["windows"]["resources"] = resources
    return doc


def pull(d: WinDaemon) -> None:
    client = d.daemon.client()
    try:
        client.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=d.image)), timeout=60)
    finally:
        client.close()


def lines(path: Path) -> Iterator[str]:
    for line in path.read_text().splitlines():
        yield line.split(" ", 1)[1]
