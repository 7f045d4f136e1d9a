"""kubelet v1.37 (standalone, static pods) runs real pods on cri-shim.

One cri-shim and one kubelet for the module; every static pod is written at the start so they come up
together, then each test checks what kubelet and crictl report for its pod. Status is read the way users
read it: kubelet's read-only API (/pods, /stats/summary), kubelet's /containerLogs (what `kubectl logs`
fetches through the API server), crictl, and the log files kubelet lays out. The last two tests kill -9
cri-shim under a running kubelet, then remove every manifest and check that nothing is left.

Test order matters (pytest runs them in file order); each test waits for its own pod, with deadlines.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.network.builtin import veth_name
from tests.conftest import stop_and_clean
from tests.harness.crilog import read_all_rotations, read_logs, rotated_files
from tests.harness.daemon import Daemon, make_workdir
from tests.harness.kubelet import Kubelet, free_port, free_subnet, remove_cgroup_tree
from tests.harness.lifecycle_env import BUSYBOX, NGINX, Mirror, lifecycle_daemon, start_mirror

T = TypeVar("T")

# The first test also pays for the module's setup (test images built on a fresh machine, the mirror, kubelet).
pytestmark = pytest.mark.timeout(600)

# Host-wide names, unique to this suite (other suites run on the same machine at the same time).
BRIDGE = "cskubelet0"
NFT_TABLE = "cri_shim_kubelet_e2e"
NODE = "cri-shim-e2e"
NS = "default"

# About 130 bytes per CRI record, 200 records a second for 20 s: kubelet (checking every 3 s) rotates ~6 times.
# The other pods write well under LOG_MAX_SIZE, so their files are never rotated.
ROTATE_LINES = 4000
LOG_MAX_SIZE = "64Ki"   # 64 * 1024 bytes


@dataclass
class Env:
    mirror: Mirror
    daemon: Daemon
    kubelet: Kubelet
    host_net_port: int
    host_port: int
    subnet: str

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 60, interval: float = 0.5) -> T:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = check()
                if value:
                    return value
            except (OSError, KeyError, IndexError, AssertionError, urllib.error.URLError) as e:
                last_error = e
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})\n"
                             f"--- kubelet log ---\n{self.kubelet.log_tail(40)}\n"
                             f"--- cri-shim log ---\n{self.daemon.log_tail(40)}")

    def pod(self, name: str) -> dict[str, Any]:
        pod = self.kubelet.pod(name)
        assert pod is not None, f"kubelet does not know pod {name}"
        return pod

    def container(self, pod: str, name: str) -> dict[str, Any]:
        statuses = self.pod(pod).get("status", {}).get("containerStatuses") or []
        return next(c for c in statuses if c["name"] == name)

    def running(self, pod: str, *containers: str) -> dict[str, Any] | None:
        p = self.pod(pod)
        statuses = {c["name"]: c for c in p.get("status", {}).get("containerStatuses") or []}
        if p["status"].get("phase") == "Running" and all("running" in statuses[c]["state"] for c in containers):
            return p
        return None

    def container_id(self, pod: str, name: str) -> str:
        cid = str(self.container(pod, name)["containerID"])
        assert cid.startswith("cri-shim://"), cid
        return cid.removeprefix("cri-shim://")

    def crictl_json(self, *args: str) -> Any:
        return json.loads(self.daemon.crictl(*args).stdout)

    def crictl_bytes(self, *args: str) -> tuple[bytes, bytes]:
        """crictl's stdout and stderr as bytes (log content is not text)."""
        self.daemon.crictl("version")  # writes the daemon's crictl.yaml
        crictl = shutil.which("crictl") or "/usr/local/bin/crictl"
        done = subprocess.run([crictl, "--config", str(self.daemon.workdir / "crictl.yaml"), *args],
                              capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    def kubelet_https(self, path: str) -> bytes:
        """kubelet's authenticated server (anonymous + AlwaysAllow here), as the API server reaches it."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # kubelet's self-signed serving certificate
        with urllib.request.urlopen(f"https://127.0.0.1:{self.kubelet.port}{path}", context=ctx, timeout=20) as r:
            return bytes(r.read())

    def kubectl_logs(self, pod: str, container: str, **query: str) -> bytes:
        """kubelet's /containerLogs: the endpoint the API server proxies `kubectl logs` to."""
        return self.kubelet_https(f"/containerLogs/{NS}/{pod}-{NODE}/{container}?{urllib.parse.urlencode(query)}")

    def log_file(self, pod: str, container: str, attempt: int) -> Path:
        p = self.pod(pod)
        uid = p["metadata"]["uid"]
        return self.kubelet.pod_logs / f"{NS}_{pod}-{NODE}_{uid}" / container / f"{attempt}.log"


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status), bytes(r.read())


def pair(streams: dict[str, bytes]) -> tuple[bytes, bytes]:
    return streams["stdout"], streams["stderr"]


def manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    for c in containers:
        c.setdefault("image", BUSYBOX)
        c.setdefault("imagePullPolicy", "IfNotPresent")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec}}


def all_manifests(host_net_port: int, host_port: int) -> list[dict[str, Any]]:
    pad = "$(head -c 80 /dev/zero | tr '\\0' x)"
    rotate = (f"pad={pad}; i=1; while [ $i -le {ROTATE_LINES} ]; do echo \"line $i $pad\"; "
              "[ $((i % 200)) = 0 ] && sleep 1; i=$((i+1)); done; echo done; exec sleep 3600")
    return [
        manifest("share", [
            {"name": "writer", "command": ["sh", "-c"],
             "args": ['echo "$GREETING from $(hostname)" > /data/msg && exec sleep 3600'],
             "env": [{"name": "GREETING", "value": "hello-e2e"}],
             "resources": {"limits": {"cpu": "250m", "memory": "48Mi"}},
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "reader", "command": ["sh", "-c", "while [ ! -s /data/msg ]; do sleep 0.2; done; "
                                                       "cat /data/msg; exec sleep 3600"],
             "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]},
        ], volumes=[{"name": "data", "emptyDir": {}}]),
        manifest("probes", [
            {"name": "app", "command": ["sh", "-c", "touch /tmp/alive; exec sleep 3600"],
             "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1,
                                "failureThreshold": 1},
             "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1,
                               "failureThreshold": 2}},
        ]),
        manifest("crasher", [
            {"name": "c", "command": ["sh", "-c", "if [ -e /state/ran ]; then echo second run; exec sleep 3600; fi; "
                                                  "touch /state/ran; echo first run; echo first-err >&2; exit 3"],
             "volumeMounts": [{"name": "state", "mountPath": "/state"}]},
        ], volumes=[{"name": "state", "emptyDir": {}}]),
        manifest("hostnet", [
            {"name": "web", "command": ["sh", "-c", "mkdir -p /tmp/www && echo hostnet-ok > /tmp/www/index.html && "
                                                    f"exec httpd -f -p 127.0.0.1:{host_net_port} -h /tmp/www"]},
        ], hostNetwork=True),
        manifest("hostport", [
            {"name": "nginx", "image": NGINX, "ports": [{"containerPort": 80, "hostPort": host_port}]},
        ]),
        manifest("dns", [{"name": "c", "command": ["sleep", "3600"]}], dnsPolicy="None",
                 dnsConfig={"nameservers": ["10.241.0.53"], "searches": ["e2e.example", "svc.e2e.example"],
                            "options": [{"name": "ndots", "value": "3"}, {"name": "edns0"}]}),
        manifest("rotate", [{"name": "c", "command": ["sh", "-c", rotate]}]),
        # The sleep after the stderr line: stdout and stderr are two pipes, and a shim reading both late (a loaded
        # machine) cannot tell which was written first, so "last" would not always be the last line.
        manifest("chatty", [
            {"name": "c", "command": ["sh", "-c",
                                      "printf 'no newline yet'; sleep 1; printf ' ...now\\n'; "
                                      "echo to-stderr >&2; sleep 1; "
                                      "printf 'a\\rb\\n'; head -c 20000 /dev/zero | tr '\\0' y; echo; "
                                      "echo last; exec sleep 3600"]},
        ]),
    ]


def cleanup_host_network(bridge: str = BRIDGE, nft_table: str = NFT_TABLE) -> None:
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", nft_table], capture_output=True)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    mirror = start_mirror()
    subnet = free_subnet()
    daemon = lifecycle_daemon(mirror, extra={"server": {"log_level": "info"}, "network": {
        "mode": "builtin", "builtin_bridge": BRIDGE, "builtin_subnet": subnet, "nft_table": NFT_TABLE}})
    kubelet: Kubelet | None = None
    try:
        daemon.start()
        client = daemon.client()
        driver = client.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10).linux.cgroup_driver
        client.close()
        kubelet = Kubelet(workdir=make_workdir("kubelet"), runtime_endpoint=daemon.endpoint, node_name=NODE,
                          cgroup_driver="systemd" if driver == pb.SYSTEMD else "cgroupfs",
                          overrides={"containerLogMaxSize": LOG_MAX_SIZE, "containerLogMaxFiles": 30,
                                     "containerLogMonitorInterval": "3s",
                                     "crashLoopBackOff": {"maxContainerRestartPeriod": "5s"}})
        e = Env(mirror, daemon, kubelet, free_port(), free_port(), subnet)
        kubelet.start()
        for m in all_manifests(e.host_net_port, e.host_port):
            kubelet.add_pod(m)
        yield e
    finally:
        teardown(mirror, daemon, kubelet)


def teardown(mirror: Mirror, daemon: Daemon, kubelet: Kubelet | None, bridge: str = BRIDGE,
             nft_table: str = NFT_TABLE) -> None:
    """Pods removed through CRI, then the daemon, the mirror, the built-in network and kubelet's cgroups."""
    try:
        if kubelet is not None:
            kubelet.stop()
        if daemon.proc is not None and daemon.proc.poll() is None:
            client = daemon.client()
            try:
                for p in client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
                    client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
                    client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
            finally:
                client.close()
        stop_and_clean(daemon)
    finally:
        mirror.close()
        cleanup_host_network(bridge, nft_table)
        if kubelet is not None:
            left = remove_cgroup_tree(kubelet.cgroup_root)
            shutil.rmtree(kubelet.workdir, ignore_errors=True)
            assert not left, f"cgroups left under kubelet's cgroupRoot: {left}"


# ------------------------------------------------------------------------------------------------ tests


def test_kubelet_runs_on_cri_shim_with_the_cgroup_driver_it_reports(env: Env) -> None:
    assert http_get(f"http://127.0.0.1:{env.kubelet.healthz_port}/healthz") == (200, b"ok")
    log = env.kubelet.log_text()
    assert '"Container runtime initialized" containerRuntime="cri-shim"' in log
    assert 'apiVersion="v1"' in log
    driver = env.crictl_json("info")["config"]["runtime"]["cgroup_driver"]
    assert f'Using cgroup driver setting received from the CRI runtime" cgroupDriver="{driver}"' in log
    # The effective config: deploy/kubelet/kubelet-config.yaml (failCgroupV1: false lets kubelet start on this
    # cgroup v1 host) with the test's drop-in on top.
    effective = json.loads(env.kubelet_https("/configz"))["kubeletconfig"]
    assert effective["failCgroupV1"] is False
    assert effective["containerRuntimeEndpoint"] == env.daemon.endpoint
    assert effective["cgroupDriver"] == driver


def test_two_containers_share_an_emptydir_with_env_command_args_and_limits(env: Env) -> None:
    env.wait("pod share running", lambda: env.running("share", "writer", "reader"), timeout=120)
    expected = f"hello-e2e from share-{NODE}\n".encode()
    env.wait("reader's output", lambda: env.kubectl_logs("share", "reader") == expected)
    assert read_logs(env.log_file("share", "reader", 0))["stdout"] == expected

    writer = env.container_id("share", "writer")
    status = env.crictl_json("inspect", writer)["status"]
    assert status["resources"]["linux"]["memoryLimitInBytes"] == str(48 << 20)
    assert status["resources"]["linux"]["cpuQuota"] == "25000"
    uid = env.pod("share")["metadata"]["uid"]
    cgroup = Path("/sys/fs/cgroup/memory") / env.kubelet.cgroup_root.lstrip("/") / "kubepods" / "burstable"
    assert (cgroup / f"pod{uid}" / writer / "memory.limit_in_bytes").read_text().strip() == str(48 << 20)
    environ = env.daemon.crictl("exec", "-s", writer, "env").stdout.splitlines()
    assert "GREETING=hello-e2e" in environ
    assert env.container("share", "writer")["ready"] and env.container("share", "reader")["ready"]
    assert env.pod("share")["status"]["qosClass"] == "Burstable"
    # kubelet creates the container from the image id; users still see the image they named.
    assert env.container("share", "writer")["image"] == BUSYBOX
    assert env.container("share", "writer")["imageID"].startswith("sha256:")


def test_readiness_follows_the_probe_and_a_failed_liveness_probe_restarts_the_container(env: Env) -> None:
    env.wait("pod probes running", lambda: env.running("probes", "app"), timeout=120)
    time.sleep(3)  # several readiness periods with /tmp/ready missing
    assert env.container("probes", "app")["ready"] is False
    first = env.container_id("probes", "app")
    env.daemon.crictl("exec", "-s", first, "touch", "/tmp/ready")
    env.wait("readiness true", lambda: env.container("probes", "app")["ready"], timeout=20)
    conditions = {c["type"]: c["status"] for c in env.pod("probes")["status"]["conditions"]}
    assert conditions["Ready"] == "True"

    env.daemon.crictl("exec", "-s", first, "rm", "/tmp/alive")
    restarted = env.wait("liveness restart", lambda: env.container("probes", "app")["restartCount"] == 1
                         and env.running("probes", "app"), timeout=60)
    assert restarted
    second = env.container_id("probes", "app")
    assert second != first
    info = env.crictl_json("inspect", second)["status"]
    assert info["metadata"] == {"name": "app", "attempt": 1}
    assert env.container("probes", "app")["ready"] is False  # a fresh /tmp: not ready again
    assert "failed liveness probe, will be restarted" in env.kubelet.log_text()


def test_exited_container_is_restarted_as_attempt_one_and_its_logs_stay_readable(env: Env) -> None:
    env.wait("crasher restarted", lambda: env.container("crasher", "c")["restartCount"] == 1
             and env.running("crasher", "c"), timeout=120)
    c = env.container("crasher", "c")
    assert c["lastState"]["terminated"]["exitCode"] == 3
    assert c["lastState"]["terminated"]["reason"] == "Error"
    assert c["restartCount"] == 1

    previous = env.wait("previous logs", lambda: env.kubectl_logs("crasher", "c", previous="true"))
    assert sorted(previous.splitlines()) == [b"first run", b"first-err"]   # two pipes: no order between them
    env.wait("current logs", lambda: env.kubectl_logs("crasher", "c") == b"second run\n")
    first, second = env.log_file("crasher", "c", 0), env.log_file("crasher", "c", 1)
    assert read_logs(first) == {"stdout": b"first run\n", "stderr": b"first-err\n"}
    assert read_logs(second) == {"stdout": b"second run\n", "stderr": b""}
    sandbox = env.crictl_json("inspect", env.container_id("crasher", "c"))["status"]["labels"][
        "io.kubernetes.pod.uid"]
    attempts = {(x["metadata"]["attempt"], x["state"]) for x in env.crictl_json(
        "ps", "-a", "--label", f"io.kubernetes.pod.uid={sandbox}", "-o", "json")["containers"]}
    assert attempts == {(0, "CONTAINER_EXITED"), (1, "CONTAINER_RUNNING")}


def test_host_network_pod_serves_on_the_host_loopback(env: Env) -> None:
    env.wait("pod hostnet running", lambda: env.running("hostnet", "web"), timeout=120)
    status, body = env.wait("hostnet http", lambda: http_get(f"http://127.0.0.1:{env.host_net_port}/"))
    assert (status, body) == (200, b"hostnet-ok\n")
    sandbox = env.crictl_json("pods", "--name", f"hostnet-{NODE}", "-o", "json")["items"][0]["id"]
    inspect = env.crictl_json("inspectp", sandbox)
    assert inspect["status"]["linux"]["namespaces"]["options"]["network"] == "NODE"


def test_hostport_reaches_the_pod_from_the_host(env: Env) -> None:
    env.wait("pod hostport running", lambda: env.running("hostport", "nginx"), timeout=120)
    status, body = env.wait("hostPort http", lambda: http_get(f"http://127.0.0.1:{env.host_port}/"))
    assert status == 200 and b"Welcome to nginx!" in body
    pod_ip = env.pod("hostport")["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(env.subnet)


def test_pod_dns_config_becomes_the_containers_resolv_conf(env: Env) -> None:
    env.wait("pod dns running", lambda: env.running("dns", "c"), timeout=120)
    resolv = env.daemon.crictl("exec", "-s", env.container_id("dns", "c"), "cat", "/etc/resolv.conf").stdout
    lines = [line for line in resolv.splitlines() if line.strip()]
    assert "nameserver 10.241.0.53" in lines
    assert "search e2e.example svc.e2e.example" in lines
    options = [line.split()[1:] for line in lines if line.startswith("options ")]
    assert len(options) == 1 and sorted(options[0]) == ["edns0", "ndots:3"]  # kubelet merges them through a map


def test_pod_log_layout_and_var_log_containers_symlinks(env: Env) -> None:
    env.wait("pod share running", lambda: env.running("share", "writer", "reader"), timeout=120)
    uid = env.pod("share")["metadata"]["uid"]
    pod_dir = env.kubelet.pod_logs / f"{NS}_share-{NODE}_{uid}"
    assert sorted(p.name for p in pod_dir.iterdir()) == ["reader", "writer"]
    for name in ("writer", "reader"):
        cid = env.container_id("share", name)
        log = pod_dir / name / "0.log"
        assert env.crictl_json("inspect", cid)["status"]["logPath"] == str(log)
        link = env.kubelet.container_logs / f"share-{NODE}_{NS}_{name}-{cid}.log"
        assert link.is_symlink() and Path(link.readlink()) == log


def test_kubelet_rotates_logs_through_reopen_and_no_line_is_lost(env: Env) -> None:
    env.wait("pod rotate running", lambda: env.running("rotate", "c"), timeout=120)
    current = env.log_file("rotate", "c", 0)
    env.wait("all lines written", lambda: read_all_rotations(current).endswith(b"done\n"), timeout=120)
    # kubelet may rotate once more after the last line (it looks every few seconds); it stops once the current
    # file is under the size limit, and only then is the set of files still.
    env.wait("rotations over", lambda: current.exists() and current.stat().st_size < 64 * 1024, timeout=30)
    lines = read_all_rotations(current).decode().splitlines()
    numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbers == list(range(1, ROTATE_LINES + 1)), "lines lost, duplicated or reordered across rotations"
    rotations = rotated_files(current)
    assert len(rotations) >= 3, f"kubelet rotated only {len(rotations)} times: {rotations}"
    assert any(r.name.endswith(".gz") for r in rotations)  # older rotations compressed by kubelet
    cid = env.container_id("rotate", "c")
    marker = f"[ReopenContainerLog container_id={cid[:13]}]: OK"
    env.wait(f"{len(rotations)} successful ReopenContainerLog",
             lambda: env.daemon.log_text().count(marker) >= len(rotations), timeout=10)
    assert "Failed to rotate log for container" not in env.kubelet.log_text()
    # kubectl logs shows the current file only, exactly as the reader does.
    assert env.kubectl_logs("rotate", "c") == read_logs(current)["stdout"]


def test_logs_read_like_kubectl_and_crictl_show_them(env: Env) -> None:
    env.wait("pod chatty running", lambda: env.running("chatty", "c"), timeout=120)
    cid = env.container_id("chatty", "c")
    log = env.log_file("chatty", "c", 0)
    env.wait("chatty done", lambda: read_logs(log)["stdout"].endswith(b"last\n"))
    mine = read_logs(log)
    assert mine["stdout"] == b"no newline yet ...now\na\rb\n" + b"y" * 20000 + b"\nlast\n"
    assert mine["stderr"] == b"to-stderr\n"
    assert env.crictl_bytes("logs", cid) == (mine["stdout"], mine["stderr"])
    assert env.crictl_bytes("logs", "--tail", "2", cid) == pair(read_logs(log, tail=2))
    assert env.crictl_bytes("logs", "-t", cid) == pair(read_logs(log, timestamps=True))
    combined = env.kubectl_logs("chatty", "c")
    assert sorted(combined.splitlines()) == sorted((mine["stdout"] + mine["stderr"]).splitlines())
    assert env.kubectl_logs("chatty", "c", tailLines="1") == b"last\n"


def test_status_through_stats_summary_and_crictl(env: Env) -> None:
    env.wait("pod share running", lambda: env.running("share", "writer", "reader"), timeout=120)
    summary = env.wait("share in /stats/summary", lambda: next(
        (p for p in env.kubelet.get("/stats/summary")["pods"] if p["podRef"]["name"] == f"share-{NODE}"), None))
    containers = {c["name"]: c for c in summary["containers"]}
    assert set(containers) == {"writer", "reader"}
    for c in containers.values():
        assert c["memory"]["workingSetBytes"] > 0
        assert c["cpu"]["usageCoreNanoSeconds"] > 0
    assert containers["reader"]["logs"]["usedBytes"] > 0  # the writer printed nothing
    node = env.kubelet.get("/stats/summary")["node"]
    assert node["nodeName"] == NODE and node["runtime"]["imageFs"]["capacityBytes"] > 0
    pods = env.crictl_json("pods", "--name", f"share-{NODE}", "-o", "json")["items"]
    assert [p["state"] for p in pods] == ["SANDBOX_READY"]
    assert pods[0]["metadata"]["uid"] == env.pod("share")["metadata"]["uid"]
    names = {c["metadata"]["name"] for c in env.crictl_json("ps", "--pod", pods[0]["id"], "-o", "json")["containers"]}
    assert names == {"writer", "reader"}


def snapshot_running(env: Env) -> dict[str, tuple[str, int, str]]:
    """pod/container -> (container id, restart count, state key) as kubelet reports them."""
    out = {}
    for pod in env.kubelet.pods():
        for c in pod["status"].get("containerStatuses") or []:
            out[f"{pod['metadata']['name']}/{c['name']}"] = (c["containerID"], c["restartCount"],
                                                             next(iter(c["state"])))
    return out


def test_kill_9_of_cri_shim_under_kubelet_restarts_nothing(env: Env) -> None:
    for m in all_manifests(env.host_net_port, env.host_port):
        name, containers = m["metadata"]["name"], [c["name"] for c in m["spec"]["containers"]]
        env.wait(f"pod {name} running", partial(env.running, name, *containers), timeout=120)
    before = snapshot_running(env)
    sandboxes = sorted(p["id"] for p in env.crictl_json("pods", "-o", "json")["items"])
    all_containers = sorted(c["id"] for c in env.crictl_json("ps", "-a", "-o", "json")["containers"])
    pids = {cid: env.crictl_json("inspect", cid)["info"]["pid"] for cid in
            (c["id"] for c in env.crictl_json("ps", "-o", "json")["containers"])}

    env.daemon.kill9()
    time.sleep(5)  # kubelet's PLEG relists fail; probes error (thrown away, not counted as failures)
    assert env.kubelet.proc is not None and env.kubelet.proc.poll() is None
    assert {p["metadata"]["name"] for p in env.kubelet.pods()} == {k.split("/")[0] for k in before}
    status, body = http_get(f"http://127.0.0.1:{env.host_port}/")  # the pods run on without the daemon
    assert status == 200 and b"nginx" in body
    env.daemon.start()
    env.wait("kubelet healthy", lambda: http_get(f"http://127.0.0.1:{env.kubelet.healthz_port}/healthz")[1] == b"ok")
    time.sleep(25)  # two sync periods and many relists: any restart kubelet wanted would have happened

    assert snapshot_running(env) == before
    assert sorted(p["id"] for p in env.crictl_json("pods", "-o", "json")["items"]) == sandboxes
    assert sorted(c["id"] for c in env.crictl_json("ps", "-a", "-o", "json")["containers"]) == all_containers
    assert {cid: env.crictl_json("inspect", cid)["info"]["pid"] for cid in pids} == pids
    status, body = http_get(f"http://127.0.0.1:{env.host_port}/")
    assert status == 200 and b"nginx" in body


def links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def nft_table() -> str:
    return subprocess.run(["nft", "list", "table", "ip", NFT_TABLE], capture_output=True, text=True).stdout


def our_mounts(env: Env) -> list[str]:
    roots = (f"{env.daemon.workdir}/", f"{env.kubelet.workdir}/")
    points = (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return sorted(p for p in points if p.startswith(roots))


def test_removing_the_manifests_tears_everything_down(env: Env) -> None:
    # What the running pods hold now, so that each "gone" below is checked against something that existed.
    assert our_mounts(env), "running pods hold mounts (netns pins, IPC/UTS namespaces, /dev/shm); none seen"
    pods = env.crictl_json("pods", "-o", "json")["items"]
    veths = {veth_name(p["id"]) for p in pods if p["metadata"]["name"] != f"hostnet-{NODE}"}
    assert len(veths) == len(pods) - 1 and veths <= links()
    assert str(env.host_port) in nft_table()
    for m in all_manifests(env.host_net_port, env.host_port):
        env.kubelet.remove_pod(m["metadata"]["name"])
    env.wait("kubelet forgets the pods", lambda: env.kubelet.pods() == [], timeout=60)
    # kubelet's container GC (every minute) removes the dead containers, then the sandboxes, then pod log dirs.
    env.wait("sandboxes removed", lambda: env.crictl_json("pods", "-o", "json")["items"] == [], timeout=150,
             interval=2)
    assert env.crictl_json("ps", "-a", "-o", "json")["containers"] == []
    env.wait("pod log dirs removed", lambda: not any(env.kubelet.pod_logs.iterdir()), timeout=90, interval=2)
    assert list(env.kubelet.container_logs.iterdir()) == []
    env.wait("kubelet pod dirs removed", lambda: not any((env.kubelet.root_dir / "pods").iterdir()), timeout=60)
    kubepods = [Path("/sys/fs/cgroup") / h / env.kubelet.cgroup_root.lstrip("/") / "kubepods"
                for h in ("memory", "cpu", "pids")]
    env.wait("pod cgroups removed", lambda: not [d for k in kubepods for d in k.rglob("pod*")], timeout=60)

    env.wait("pod mounts released", lambda: not our_mounts(env), timeout=30)
    assert not veths & links(), f"pod veths left: {veths & links()}"
    assert str(env.host_port) not in nft_table(), f"hostPort rule left:\n{nft_table()}"
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{env.host_net_port}/")
