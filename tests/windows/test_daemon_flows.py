"""Full CRI flows for Windows pods through a real daemon, crictl and gRPC, on the fake HCS (see daemon_env.py).

These prove the daemon's side on Linux: the services route Windows handlers
through windows_mapping to WindowsBackend, create and delete the pod's HCN
namespace, run CNI with the namespace GUID, write a schema-valid OCI spec, and
that the HCS calls and documents that result are the documented ones (the
fake validates each document closed-world against the 21H2 schema; the tests
validate them again). They cannot prove that Windows behaves like the fake
(README: not verified on Windows yet).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from runtime.windows.testing.schemas import ClosedWorld, OciWindowsSchema
from tests.harness.registry import LocalRegistry, start_registry
from tests.windows.daemon_env import (HANDLER_HYPERV, HANDLER_PROCESS, POD_IP, WinDaemon, container_config, lines,
                                      pod_config, pull, push_image, windows_daemon)


@pytest.fixture(scope="module")
def registry() -> Iterator[tuple[LocalRegistry, str]]:
    reg = start_registry()
    try:
        yield reg, push_image(reg)
    finally:
        reg.stop()


def _start(registry: tuple[LocalRegistry, str], lifecycle: dict[str, Any] | None = None) -> WinDaemon:
    d = windows_daemon(*registry, lifecycle=lifecycle)
    d.daemon.start()
    pull(d)
    return d


def _finish(d: WinDaemon) -> None:
    d.daemon.stop()
    assert "Traceback" not in d.daemon.log_text(), d.daemon.log_tail(200)
    shutil.rmtree(d.daemon.workdir, ignore_errors=True)


@pytest.fixture
def wd(registry: tuple[LocalRegistry, str]) -> Iterator[WinDaemon]:
    d = _start(registry)
    yield d
    _finish(d)


def hcs_calls(report: dict[str, Any]) -> list[str]:
    return [f"{name} {detail}".strip() for name, detail in report["calls"] if name != "HcsCancelOperation"]


def assert_documents_valid(report: dict[str, Any], hcs_21h2: ClosedWorld) -> None:
    assert report["documents"], "the fake HCS saw no documents"
    for definition, doc in report["documents"]:
        assert hcs_21h2.errors(definition, doc) == [], (definition, doc)
    assert report["problems"] == []


def test_process_isolated_pod_runs_through_crictl_with_the_documented_hcs_calls(
        wd: WinDaemon, hcs_21h2: ClosedWorld, oci_windows: OciWindowsSchema) -> None:
    logs = wd.daemon.workdir / "logs"
    pod_json = wd.write("pod.json", pod_config("web", log_dir=logs))
    ctr_json = wd.write("ctr.json", container_config("web", wd.image))
    pod = wd.crictl("runp", "--runtime", HANDLER_PROCESS, pod_json)
    cid = wd.crictl("create", pod, ctr_json, pod_json)
    wd.crictl("start", cid)
    assert wd.crictl("exec", "-s", cid, "cmd", "/c", "echo", "hello-windows") == "hello-windows"
    status = json.loads(wd.crictl("inspectp", pod))["status"]
    assert (status["state"], status["network"]["ip"], status["linux"]) == ("SANDBOX_READY", POD_IP, None)
    spec = json.loads(wd.crictl("inspect", cid))["info"]["runtimeSpec"]
    assert oci_windows.errors(spec["windows"]) == []
    namespace = spec["windows"]["network"]["networkNamespace"]
    scratch = str(wd.daemon.root / "containers" / cid / "scratch")
    assert spec["windows"]["layerFolders"][-1] == scratch and len(spec["windows"]["layerFolders"]) == 3
    assert spec["process"]["args"] == ["ping", "-t", "localhost"] and spec["process"]["cwd"] == "C:\\app"
    wd.crictl("stop", "--timeout", "10", cid)
    assert list(lines(logs / "web.log")) == ["stdout F Pinging localhost"]
    wd.crictl("rm", cid)
    wd.crictl("stopp", pod)
    wd.crictl("rmp", pod)
    assert wd.crictl("pods", "-q") == ""

    # CNI ran with the pod's HCN namespace GUID as its netns, for ADD and for DEL.
    assert wd.cni_calls() == [["ADD", pod, namespace], ["DEL", pod, namespace]]
    report = wd.report()
    assert report["hcn_calls"] == [["create_namespace", namespace], ["delete_namespace", namespace]]
    assert report["layer_calls"] == [["mount", scratch], ["unmount", scratch]]
    assert hcs_calls(report) == [
        f"HcsCreateComputeSystem {cid}",
        "HcsGetComputeSystemProperties {}",
        f"HcsStartComputeSystem {cid}",
        f"HcsCreateProcess {cid} ping -t localhost",
        f"HcsCreateProcess {cid} cmd /c echo hello-windows",
        "HcsCloseProcess 4004",
        "HcsSignalProcess 4000 CtrlShutdown",
        f"HcsShutDownComputeSystem {cid}",
        "HcsCloseProcess 4000",
        f"HcsTerminateComputeSystem {cid}",
        f"HcsCloseComputeSystem {cid}",
    ]
    created = [doc for definition, doc in report["documents"] if definition == "ComputeSystem"]
    assert [d["Container"]["Networking"]["Namespace"] for d in created] == [namespace]
    assert_documents_valid(report, hcs_21h2)
