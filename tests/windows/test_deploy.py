"""deploy/windows stays consistent with the code: service name, module, pipe, handlers, config keys.

The install script itself (PowerShell, sc.exe, icacls) runs only on Windows: windows_only.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cri_shim import config as C
from cri_shim import windows_mapping, windows_service

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "windows"


def test_the_windows_config_uses_only_known_keys_of_the_right_types() -> None:
    raw = tomllib.loads((DEPLOY / "config.toml").read_text())
    config = C._build(C.Config, raw, "deploy/windows/config.toml", "")    # keys and types, not host paths
    C._validate_windows(config.windows, "deploy/windows/config.toml")
    assert config.windows.pipe == C.WindowsConfig().pipe


def test_kubelet_dials_the_pipe_the_daemon_relays() -> None:
    pipe = C.WindowsConfig().pipe                                  # \\.\pipe\cri-shim
    endpoint = "npipe:////./pipe/" + pipe.rsplit("\\", 1)[-1]
    text = (DEPLOY / "kubelet-config.yaml").read_text()
    assert f"containerRuntimeEndpoint: {endpoint}" in text
    assert f"imageServiceEndpoint: {endpoint}" in text
    assert "cgroupsPerQOS: false" in text


def test_runtime_classes_name_the_handlers_the_backend_serves() -> None:
    text = (DEPLOY / "runtime-class.yaml").read_text()
    assert f"handler: {windows_mapping.HANDLER_PROCESS}" in text
    assert f"handler: {windows_mapping.HANDLER_HYPERV}" in text


def test_the_install_script_registers_the_service_host_module() -> None:
    text = (DEPLOY / "install.ps1").read_text()
    assert f'$ServiceName = "{windows_service.SERVICE_NAME}"' in text
    assert "-m cri_shim.windows_service --config" in text
    assert "restart/5000" in text and "obj= LocalSystem" in text
    assert "$MinBuild = 20348" in text


@pytest.mark.windows_only
def test_install_script_installs_and_removes_the_service() -> None:
    import subprocess
    subprocess.run(["powershell.exe", "-File", str(DEPLOY / "install.ps1")], check=True)
    subprocess.run(["powershell.exe", "-File", str(DEPLOY / "install.ps1"), "-Uninstall"], check=True)
