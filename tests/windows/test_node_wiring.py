"""The daemon-side wiring of the Windows runtime: config section, per-handler backends, DLL loading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cri_shim import config as C
from cri_shim.errors import ConfigError
from cri_shim.windows_node import backend_configs, build_backends, build_node, grpc_address
from runtime.logs import CriLogWriter
from runtime.windows.testing.node import program_for
from runtime.base import Unsupported


def test_each_handler_gets_its_own_state_and_hcs_owner() -> None:
    cfgs = backend_configs(C.load(None, {"windows": {"owner": "node1", "uvm_memory_mb": 2048,
                                                     "operation_timeout": 60}}))
    process, hyperv = cfgs["runhcs-wcow-process"], cfgs["runhcs-wcow-hypervisor"]
    assert (process.owner, hyperv.owner) == ("node1.process", "node1.hyperv")
    assert process.state_dir != hyperv.state_dir
    assert (process.hyperv, hyperv.hyperv) == (False, True)
    assert hyperv.uvm.memory_mb == 2048 and hyperv.operation_timeout_ms == 60_000


@pytest.mark.parametrize("override, message", [
    ({"owner": "has space"}, "windows.owner"),
    ({"pipe": "cri-shim"}, "windows.pipe"),
    ({"grpc_port": 70000}, "windows.grpc_port"),
    ({"state_dir": "relative\\dir"}, "windows.state_dir"),
    ({"uvm_memory_mb": 64}, "windows.uvm_memory_mb"),
    ({"unknown": 1}, "unknown key windows.unknown"),
    ({"test_fake_hcs": "relative/dir"}, "windows.test_fake_hcs"),
])
def test_bad_windows_settings_name_the_key(override: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        C.load(None, {"windows": override})


def test_grpc_listens_on_loopback_only() -> None:
    assert grpc_address(C.load(None)) == "127.0.0.1:10270"


@pytest.mark.skipif(sys.platform == "win32", reason="checks the refusal on non-Windows hosts")
def test_building_the_real_backends_off_windows_is_refused_clearly() -> None:
    with pytest.raises(Unsupported, match="needs Windows Server 2022"):
        build_backends(C.load(None), lambda path: None)  # type: ignore[arg-type,return-value]


@pytest.mark.windows_only
def test_the_real_backends_load_on_windows_server_2022() -> None:
    from runtime.logs import CriLogWriter
    backends = build_backends(C.load(None), lambda path: CriLogWriter(path))
    assert [b.name for b in backends] == ["runhcs-wcow-process", "runhcs-wcow-hypervisor"]


def test_the_fake_hcs_switch_is_off_by_default_and_builds_both_handlers_on_fakes(tmp_path: Path) -> None:
    assert C.load(None).windows.test_fake_hcs == ""
    cfg = C.load(None, {"server": {"state": str(tmp_path / "s")}, "windows": {"test_fake_hcs": str(tmp_path / "r")}})
    node = build_node(cfg, lambda path: CriLogWriter(path))
    assert sorted(node.handlers()) == ["runhcs-wcow-hypervisor", "runhcs-wcow-process"]
    assert node.namespaces is not None
    assert {b._cfg.state_dir for b in node.backends} == {str(tmp_path / "s" / "windows" / "process"),  # type: ignore[attr-defined]
                                                         str(tmp_path / "s" / "windows" / "hyperv")}
    node.close()
    report = json.loads((tmp_path / "r" / "fake-hcs.json").read_text())
    assert report["calls"] == [] and report["problems"] == []


@pytest.mark.parametrize("line, stdout, code, runs_on", [
    ("cmd /c echo hello there", b"hello there\r\n", 0, False),
    ('cmd /c "echo quoted"', b"quoted\r\n", 0, False),
    ("cmd /c exit 3", b"", 3, False),
    ("ping -t localhost", b"Pinging localhost\r\n", 0, True),
    ("anything.exe --else", b"", 0, False),
])
def test_the_daemon_fake_scripts_processes_from_their_command_line(line: str, stdout: bytes, code: int,
                                                                     runs_on: bool) -> None:
    program = program_for(line)
    assert (program.stdout, program.exit_code, program.until_signalled) == (stdout, code, runs_on)
