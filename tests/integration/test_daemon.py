"""The daemon as an operator meets it: crictl against a real cri-shim process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness.daemon import REPO, Daemon, make_workdir, new_daemon


def test_crictl_version(daemon: Daemon) -> None:
    out = daemon.crictl("version").stdout
    assert re.search(r"RuntimeName:\s+cri-shim", out)
    assert re.search(r"RuntimeApiVersion:\s+v1", out)
    assert re.search(r"RuntimeVersion:\s+\d+\.\d+\.\d+", out)


def test_crictl_info_conditions_and_config(daemon: Daemon) -> None:
    info = json.loads(daemon.crictl("info").stdout)
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is True
    assert info["config"]["server"]["socket"] == str(daemon.socket)  # the effective config, as JSON
    assert info["host"]["cgroup_mode"] in ("v1", "hybrid", "v2")
    # "" is the native runtime; "runc" is there whenever runtime.runc_path (default /usr/sbin/runc) is executable.
    runc = ["runc"] if os.access("/usr/sbin/runc", os.X_OK) else []
    assert [h.get("name", "") for h in info["runtimeHandlers"]] == ["", *runc]


def test_network_not_ready_names_the_directory_then_turns_ready() -> None:
    d = new_daemon({"network": {"mode": "cni"}}, cni=False).start()
    try:
        client = d.client()
        cond = {c.type: c for c in client.runtime.Status(pb.StatusRequest()).status.conditions}
        assert cond["NetworkReady"].status is False
        assert cond["NetworkReady"].reason == "NetworkPluginNotReady"
        assert str(d.cni_conf_dir) in cond["NetworkReady"].message
        # a broken file is named with what is wrong with it
        (d.cni_conf_dir / "05-broken.conflist").write_text("{not json")
        cond = {c.type: c for c in client.runtime.Status(pb.StatusRequest()).status.conditions}
        assert "05-broken.conflist" in cond["NetworkReady"].message and "not valid JSON" in cond["NetworkReady"].message
        (d.cni_conf_dir / "06-unknown.conflist").write_text(
            '{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"no-such-plugin"}]}')
        cond = {c.type: c for c in client.runtime.Status(pb.StatusRequest()).status.conditions}
        assert "'no-such-plugin' not found" in cond["NetworkReady"].message
        (d.cni_conf_dir / "10-bridge.conflist").write_text(
            '{"cniVersion":"1.0.0","name":"ok","plugins":[{"type":"bridge"}]}')
        cond = {c.type: c for c in client.runtime.Status(pb.StatusRequest()).status.conditions}
        assert cond["NetworkReady"].status is True
        client.close()
    finally:
        stop_and_clean(d)


def test_builtin_network_makes_a_node_ready_without_cni() -> None:
    d = new_daemon(cni=False).start()
    try:
        info = json.loads(d.crictl("info").stdout)
        cond = {c["type"]: c for c in info["status"]["conditions"]}
        assert cond["NetworkReady"]["status"] is True
        assert "built-in network" in info["network"]["message"]
    finally:
        stop_and_clean(d)


def test_runtime_config_and_imagefsinfo(daemon: Daemon) -> None:
    assert re.search(r"cgroup driver:\s+CGROUPFS", daemon.crictl("runtime-config").stdout)
    before = json.loads(daemon.crictl("imagefsinfo").stdout)["status"]["imageFilesystems"][0]
    assert before["fsId"]["mountpoint"] == str(daemon.root)
    assert int(before["timestamp"]) > 0
    blob = daemon.root / "content" / "blob"
    blob.write_bytes(os.urandom(1 << 20))
    after = json.loads(daemon.crictl("imagefsinfo").stdout)["status"]["imageFilesystems"][0]
    assert int(after["usedBytes"]["value"]) >= int(before["usedBytes"]["value"]) + (1 << 20)
    assert int(after["inodesUsed"]["value"]) == int(before["inodesUsed"]["value"]) + 1
    os.link(blob, daemon.root / "snapshots" / "hardlink")  # counted once
    again = json.loads(daemon.crictl("imagefsinfo").stdout)["status"]["imageFilesystems"][0]
    assert again["inodesUsed"]["value"] == after["inodesUsed"]["value"]


def test_update_runtime_config_persists_and_validates(daemon: Daemon) -> None:
    daemon.crictl("update-runtime-config", "--pod-cidr", "10.244.1.0/24")
    bad = daemon.crictl("update-runtime-config", "--pod-cidr", "10.244.1.0/99", check=False)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "is not a CIDR" in bad.stderr
    daemon.stop()
    daemon.start()
    info = json.loads(daemon.crictl("info").stdout)
    assert info["network"]["podCIDR"] == "10.244.1.0/24"


def test_unimplemented_rpcs_say_so(daemon: Daemon) -> None:
    client = daemon.client()
    with pytest.raises(grpc.RpcError) as e:
        client.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id="x"))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer is not implemented by cri-shim" in (e.value.details() or "")
    stream = client.runtime.StreamPodSandboxes(pb.StreamPodSandboxesRequest())
    with pytest.raises(grpc.RpcError) as e:
        next(iter(stream))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED  # what cri-client's fallback looks for
    client.close()


def test_socket_permissions(daemon: Daemon) -> None:
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) & 0o007 == 0
    assert stat.S_IMODE(os.stat(daemon.root).st_mode) == 0o700


def test_second_instance_on_same_socket_refuses(daemon: Daemon) -> None:
    other = make_workdir()
    try:
        proc = subprocess.run([sys.executable, "-m", "cri_shim", "serve", "--config", str(daemon.config_path),
                               "--socket", str(daemon.socket), "--root", str(other / "root"),
                               "--state", str(other / "state")],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
        assert proc.returncode != 0
        assert f"already using socket {daemon.socket}" in proc.stderr
        assert f"pid {daemon.proc.pid}" in proc.stderr  # type: ignore[union-attr]
        assert "Traceback" not in proc.stderr
        daemon.crictl("version")  # the first one is unharmed
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_stale_socket_is_replaced() -> None:
    d = new_daemon()
    try:
        d.socket.parent.mkdir(mode=0o750, parents=True)
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d.socket))  # a socket file nobody listens on: what a crash leaves
        s.close()
        d.start()
        d.crictl("version")
        assert "replacing stale socket" in d.log_text()
    finally:
        stop_and_clean(d)


def test_sigterm_stops_within_bound(daemon: Daemon) -> None:
    assert daemon.proc is not None
    start = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    assert time.monotonic() - start < 10
    assert not daemon.socket.exists()


def test_metrics_count_rpcs_by_method_and_code(daemon: Daemon) -> None:
    daemon.crictl("version")
    daemon.crictl("pods", check=False)  # UNIMPLEMENTED for now
    port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", daemon.log_text()).group(1))  # type: ignore[union-attr]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(r'cri_shim_grpc_requests_total\{code="OK",method="Version"\} [1-9]', text)
    assert 'cri_shim_grpc_request_duration_seconds_bucket{le="0.001",method="Version"}' in text


def _serve(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cri_shim", "serve", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd)


@pytest.mark.parametrize("config_text, expected", [
    ('[server]\nbogus = 1\n', "unknown key server.bogus"),
    ('[server]\nshutdown_timeout = "x"\n', "server.shutdown_timeout: expected a number"),
])
def test_bad_config_exits_with_file_key_reason(tmp_path: Path, config_text: str, expected: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config_text)
    proc = _serve(["--config", str(cfg)])
    assert proc.returncode != 0
    assert str(cfg) in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unusable_paths_give_clear_errors() -> None:
    work = make_workdir()
    try:
        (work / "file").write_text("x")
        cfg = work / "c.toml"
        cfg.write_text('[server]\nmetrics_address = ""\n')
        proc = _serve(["--config", str(cfg), "--socket", str(work / "file" / "s.sock"),
                       "--root", str(work / "root"), "--state", str(work / "state")])
        assert proc.returncode != 0 and "socket directory" in proc.stderr and "Traceback" not in proc.stderr
        proc = _serve(["--config", str(cfg), "--socket", str(work / "s" / "s.sock"),
                       "--root", str(work / "file"), "--state", str(work / "state")])
        assert proc.returncode != 0 and f"root directory {work / 'file'}" in proc.stderr
        assert "Traceback" not in proc.stderr
        proc = _serve(["--config", str(cfg), "--socket", "/tmp/world-writable.sock",
                       "--root", str(work / "root2"), "--state", str(work / "state2")])
        assert proc.returncode != 0 and "world-accessible" in proc.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_check_reports_host_support() -> None:
    proc = subprocess.run([sys.executable, "-m", "cri_shim", "check", "--json"], capture_output=True, text=True,
                          timeout=30, cwd=REPO)
    report = json.loads(proc.stdout)
    assert report["cgroup_mode"] in ("v1", "hybrid", "v2")
    assert "memory" in report["cgroup_controllers"]
    assert report["overlayfs"] is True
    assert "message" in report["cni"]
    human = subprocess.run([sys.executable, "-m", "cri_shim", "check"], capture_output=True, text=True,
                           timeout=30, cwd=REPO).stdout
    assert "cgroups" in human and "overlayfs" in human and "user namespaces" in human


def test_config_default_prints_full_config() -> None:
    out = subprocess.run([sys.executable, "-m", "cri_shim", "config", "default"], capture_output=True, text=True,
                         timeout=30, cwd=REPO).stdout
    assert out == (REPO / "deploy" / "config.toml").read_text()
    assert 'socket = "/run/cri-shim/cri-shim.sock"' in out
