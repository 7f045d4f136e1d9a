"""The files in deploy/ as an operator installs them: `make install`, the systemd unit, tmpfiles, crictl.yaml,
the kubelet snippet, and the daemon's systemd readiness protocol (sd_notify)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.config import load as load_config
from tests.conftest import stop_and_clean
from tests.harness.daemon import REPO, Daemon, make_workdir, new_daemon
from tests.harness.unitfile import parse_simple_yaml, read_unit

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "cri-shim.service"
DEFAULT_SOCKET = tomllib.loads((DEPLOY / "config.toml").read_text())["server"]["socket"]


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """`make install` into a staging DESTDIR: the same commands an operator runs, nothing outside the dir."""
    dest = make_workdir("install")
    result = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"make install failed:\n{result.stdout}\n{result.stderr}"
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def verify_unit(unit: Path) -> str:
    """systemd's own parser; it exits 0 even for a key it ignores, so what it prints is the verdict."""
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else f"\nexit {result.returncode}")


def unit_pointing_into(dest: Path, workdir: Path, text: str | None = None) -> Path:
    """The installed unit with its /opt/cri-shim paths moved into the staging dir, so ExecStart resolves."""
    text = text if text is not None else (dest / "etc/systemd/system/cri-shim.service").read_text()
    unit = workdir / "cri-shim.service"
    unit.write_text(text.replace("/opt/cri-shim/", f"{dest}/opt/cri-shim/"))
    return unit


def test_unit_declares_notify_readiness_process_killmode_delegation_and_restart() -> None:
    service = read_unit(UNIT)["Service"]
    assert service["Type"] == ["notify"]
    assert service["KillMode"] == ["process"]  # shims and containers outlive a daemon restart
    assert service["Delegate"] == ["yes"]
    assert service["Restart"] == ["always"]
    exec_start = service["ExecStart"][0].split()
    assert exec_start[:2] == ["/opt/cri-shim/bin/cri-shim", "serve"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/cri-shim/config.toml"
    assert read_unit(UNIT)["Unit"]["Before"] == ["kubelet.service"]


def test_socket_path_is_the_same_in_config_crictl_yaml_and_kubelet_snippet() -> None:
    endpoint = f"unix://{DEFAULT_SOCKET}"
    crictl = parse_simple_yaml((DEPLOY / "crictl.yaml").read_text())
    assert crictl["runtime-endpoint"] == crictl["image-endpoint"] == endpoint
    kubelet = parse_simple_yaml((DEPLOY / "kubelet" / "kubelet-config.yaml").read_text())
    assert kubelet["containerRuntimeEndpoint"] == kubelet["imageServiceEndpoint"] == endpoint
    assert kubelet["kind"] == "KubeletConfiguration"
    assert kubelet["cgroupDriver"] == tomllib.loads((DEPLOY / "config.toml").read_text())["runtime"]["cgroup_driver"]
    assert kubelet["failCgroupV1"] == "false"
    kind = (DEPLOY / "kind" / "cluster.yaml").read_text()
    assert kind.count(f"criSocket: {endpoint}") == 2 and f"containerRuntimeEndpoint: {endpoint}" in kind


def test_make_install_puts_a_working_package_and_the_unit_in_place(installed: Path) -> None:
    venv_python = installed / "opt/cri-shim/bin/python"
    out = subprocess.run([str(venv_python), "-m", "cri_shim", "config", "default"], capture_output=True, text=True,
                         timeout=60, cwd="/")  # cwd=/ so the repository checkout is not what gets imported
    assert out.returncode == 0, out.stderr
    assert out.stdout == (DEPLOY / "config.toml").read_text()
    assert (installed / "opt/cri-shim/bin/cri-shim").exists()
    assert (installed / "etc/cri-shim/config.toml").read_text() == (DEPLOY / "config.toml").read_text()
    assert (installed / "etc/crictl.yaml").read_text() == (DEPLOY / "crictl.yaml").read_text()
    assert (installed / "etc/systemd/system/cri-shim.service").read_text() == UNIT.read_text()


def test_make_install_keeps_an_existing_config(installed: Path) -> None:
    config = installed / "etc/cri-shim/config.toml"
    config.write_text("# operator's own\n")
    try:
        result = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={installed}"], capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert config.read_text() == "# operator's own\n"
    finally:
        config.write_text((DEPLOY / "config.toml").read_text())


def test_systemd_analyze_verify_accepts_the_installed_unit(installed: Path, workdir: Path) -> None:
    assert verify_unit(unit_pointing_into(installed, workdir)) == ""


def test_systemd_analyze_verify_would_catch_a_broken_unit(installed: Path, workdir: Path) -> None:
    """The check above can fail: a misspelt value and a missing ExecStart binary are both reported."""
    text = (installed / "etc/systemd/system/cri-shim.service").read_text()
    broken = text.replace("KillMode=process", "KillMode=proces").replace("bin/cri-shim", "bin/cri-shimm")
    report = verify_unit(unit_pointing_into(installed, workdir, broken))
    assert "kill mode" in report and "cri-shimm" in report


def test_tmpfiles_creates_the_runtime_dirs_private(installed: Path) -> None:
    conf = installed / "usr/lib/tmpfiles.d/cri-shim.conf"
    result = subprocess.run(["systemd-tmpfiles", f"--root={installed}", "--create", str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modes = {p: (installed / p).stat().st_mode & 0o777 for p in ("run/cri-shim", "var/lib/cri-shim")}
    assert modes == {"run/cri-shim": 0o700, "var/lib/cri-shim": 0o700}  # the CRI socket is node root
    assert (installed / "var/log/pods").is_dir() and (installed / "var/log/containers").is_dir()


def test_deploy_crictl_yaml_drives_crictl(daemon: Daemon) -> None:
    """deploy/crictl.yaml with only its endpoints moved to this test's daemon: crictl accepts every key."""
    text = (DEPLOY / "crictl.yaml").read_text().replace(f"unix://{DEFAULT_SOCKET}", daemon.endpoint)
    assert daemon.endpoint in text
    config = daemon.workdir / "deploy-crictl.yaml"
    config.write_text(text)
    crictl = shutil.which("crictl") or "/usr/local/bin/crictl"
    version = subprocess.run([crictl, "--config", str(config), "version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0, version.stderr
    assert re.search(r"RuntimeName:\s+cri-shim", version.stdout)
    info = subprocess.run([crictl, "--config", str(config), "info"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["config"]["server"]["socket"] == str(daemon.socket)
    images = subprocess.run([crictl, "--config", str(config), "images"], capture_output=True, text=True,
                            timeout=60)
    assert images.returncode == 0, images.stderr  # the image endpoint too


def notify_listener(workdir: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"cri-shim-test-notify-{os.getpid()}-{workdir.name}"
        sock.bind("\0" + name)
        return sock, "@" + name
    path = str(workdir / "notify.sock")
    sock.bind(path)
    return sock, path


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_once_serving_and_stopping_on_sigterm(abstract: bool) -> None:
    d = new_daemon()
    listener, address = notify_listener(d.workdir, abstract)
    listener.settimeout(30)
    try:
        # Started by hand (not Daemon.start, which polls until the socket answers): the first thing we wait for is
        # READY=1, and right after it a call must succeed at once, as kubelet's first call would.
        with open(d.log_path, "ab") as log:
            d.proc = subprocess.Popen(d.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": address})
        assert listener.recv(4096) == b"READY=1"
        client = d.client()
        try:
            version = client.runtime.Version(pb.VersionRequest(), timeout=5, wait_for_ready=False)
            assert version.runtime_name == "cri-shim"
        finally:
            client.close()
        d.proc.terminate()
        assert listener.recv(4096) == b"STOPPING=1"
        assert d.proc.wait(30) == 0
    finally:
        listener.close()
        stop_and_clean(d)


def test_daemon_without_notify_socket_sends_nothing_and_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    d = new_daemon().start()
    try:
        assert "Traceback" not in d.log_text()
        assert d.crictl("version").returncode == 0
    finally:
        stop_and_clean(d)


def test_kind_node_config_is_a_valid_cri_shim_config_on_the_default_socket() -> None:
    config = load_config(DEPLOY / "kind" / "config.toml")
    assert str(config.socket_path) == DEFAULT_SOCKET
    assert config.runtime.cgroup_driver == "cgroupfs"


def test_kind_dockerfile_copies_files_that_exist() -> None:
    """A renamed deploy file must not silently break the node image recipe (it cannot be built here)."""
    sources = [src for line in (DEPLOY / "kind" / "Dockerfile").read_text().splitlines()
               if line.startswith("COPY ") and "--from=" not in line for src in line.split()[1:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"deploy/kind/Dockerfile copies {source}, which does not exist"
