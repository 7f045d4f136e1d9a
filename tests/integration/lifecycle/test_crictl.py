"""crictl v1.37.0 runs a pod end to end against the daemon: runp, create, start, ps, pods, inspect, inspectp,
exec -s, logs, stats, statsp, update, events, stop, rm, stopp, rmp."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import IO

from tests.harness.daemon import Daemon
from tests.harness.lifecycle_env import BUSYBOX, Cri, cgroups_of, container_config, first_pod_seen, wait_for


def _write(path: Path, obj: object) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_crictl_runs_a_busybox_pod_end_to_end(daemon: Daemon, cri: Cri, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    pod = _write(tmp_path / "pod.json", {"metadata": {"name": "crictl-pod", "namespace": "ns", "uid": "u1"},
                                         "hostname": "crictl-host", "log_directory": str(logs),
                                         "labels": {"app": "crictl"}, "linux": {}})
    ctr = _write(tmp_path / "ctr.json", {"metadata": {"name": "bb"}, "image": {"image": BUSYBOX},
                                         "command": ["sh", "-c", "echo started; hostname; exec sleep 1000"],
                                         "log_path": "bb.log", "labels": {"tier": "one"}})
    sid = daemon.crictl("runp", pod).stdout.strip()
    cid = daemon.crictl("create", sid, ctr, pod).stdout.strip()
    assert "Created" in daemon.crictl("ps", "-a", "--id", cid).stdout
    daemon.crictl("start", cid)

    assert cid[:13] in daemon.crictl("ps", "--state", "running", "--label", "tier=one").stdout
    pods = daemon.crictl("pods", "--name", "crictl-pod", "-o", "json").stdout
    assert [p["id"] for p in json.loads(pods)["items"]] == [sid]

    inspectp = json.loads(daemon.crictl("inspectp", sid).stdout)
    assert inspectp["status"]["state"] == "SANDBOX_READY"
    assert inspectp["status"]["labels"] == {"app": "crictl"}
    assert inspectp["info"]["netns"]   # verbose info parsed by crictl: valid JSON

    inspect = json.loads(daemon.crictl("inspect", cid).stdout)
    assert inspect["status"]["state"] == "CONTAINER_RUNNING"
    assert inspect["status"]["logPath"] == str(logs / "bb.log")
    assert inspect["info"]["runtimeSpec"]["process"]["args"][0] == "sh"

    assert daemon.crictl("exec", "-s", cid, "cat", "/etc/hostname").stdout.splitlines()[0] == "crictl-host"
    assert wait_for(lambda: "crictl-host" in daemon.crictl("logs", cid).stdout)
    assert daemon.crictl("logs", cid).stdout.splitlines()[:2] == ["started", "crictl-host"]

    stats = json.loads(daemon.crictl("stats", "-o", "json", "--id", cid).stdout)["stats"]
    assert stats[0]["attributes"]["id"] == cid and int(stats[0]["memory"]["timestamp"]) > 0
    statsp = json.loads(daemon.crictl("statsp", "-o", "json", "--id", sid).stdout)["stats"]
    assert statsp[0]["attributes"]["id"] == sid

    daemon.crictl("update", "--memory", str(64 << 20), "--cpu-quota", "50000", "--cpu-period", "100000", cid)
    resources = json.loads(daemon.crictl("inspect", cid).stdout)["status"]["resources"]["linux"]
    assert resources["memoryLimitInBytes"] == str(64 << 20) and resources["cpuQuota"] == "50000"
    mem_dirs = [d for d in cgroups_of(sid) if "/memory/" in d]
    assert mem_dirs and (Path(mem_dirs[0]) / cid / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)

    daemon.crictl("stop", "--timeout", "5", cid)
    stopped = json.loads(daemon.crictl("inspect", cid).stdout)["status"]
    assert stopped["state"] == "CONTAINER_EXITED" and stopped["exitCode"] == 143 and stopped["reason"] == "Error"
    daemon.crictl("rm", cid)
    assert daemon.crictl("ps", "-a", "-q").stdout.strip() == ""
    daemon.crictl("stopp", sid)
    assert json.loads(daemon.crictl("inspectp", sid).stdout)["status"]["state"] == "SANDBOX_NOTREADY"
    daemon.crictl("rmp", sid)
    assert daemon.crictl("pods", "-q").stdout.strip() == ""
    assert cgroups_of(sid) == []


def test_crictl_rm_force_and_rmp_force_remove_running_objects(daemon: Daemon, cri: Cri, tmp_path: Path) -> None:
    pod = _write(tmp_path / "pod.json", {"metadata": {"name": "force", "namespace": "ns", "uid": "u2"}})
    ctr = _write(tmp_path / "ctr.json", {"metadata": {"name": "bb"}, "image": {"image": BUSYBOX},
                                         "command": ["sleep", "1000"]})
    sid = daemon.crictl("runp", pod).stdout.strip()
    cid = daemon.crictl("create", sid, ctr, pod).stdout.strip()
    daemon.crictl("start", cid)
    daemon.crictl("rm", "-f", cid)
    cid2 = daemon.crictl("run", "--no-pull", ctr, pod, check=False)  # same pod metadata: the name is taken
    assert cid2.returncode != 0 and "already exists" in cid2.stderr
    cid3 = daemon.crictl("create", sid, ctr, pod).stdout.strip()
    daemon.crictl("start", cid3)
    daemon.crictl("rmp", "-f", sid)
    assert daemon.crictl("ps", "-a", "-q").stdout.strip() == ""
    assert daemon.crictl("pods", "-q").stdout.strip() == ""


def test_crictl_events_reports_the_container_lifecycle(daemon: Daemon, cri: Cri) -> None:
    crictl = daemon.crictl("version").args[0]
    events = subprocess.Popen([crictl, "--config", str(daemon.workdir / "crictl.yaml"), "events", "-o", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert events.stdout is not None
    out = bytearray()
    reader = threading.Thread(target=_read_all, args=(events.stdout, out), daemon=True)
    reader.start()
    try:
        sid = first_pod_seen(cri, lambda oid: bool(_event_kinds(out, oid)), "events")
        cid = cri.create(sid, container_config("bb", command=["sh", "-c", "exit 3"]))
        daemon.crictl("start", cid)
        assert wait_for(lambda: cri.status(cid).status.state == 2)
        daemon.crictl("rm", cid)
        assert wait_for(lambda: "CONTAINER_DELETED_EVENT" in _event_kinds(out, cid)), out.decode()
    finally:
        events.terminate()
        events.wait(10)
        reader.join(10)
    # A container that exits at once still reports STARTED before STOPPED.
    assert _event_kinds(out, cid) == ["CONTAINER_CREATED_EVENT", "CONTAINER_STARTED_EVENT",
                                      "CONTAINER_STOPPED_EVENT", "CONTAINER_DELETED_EVENT"], out.decode()


def _read_all(pipe: IO[bytes], out: bytearray) -> None:
    while chunk := pipe.read1(65536):
        out += chunk


def _event_kinds(out: bytearray, object_id: str) -> list[str]:
    """The event types crictl printed for one object, from the complete JSON objects printed so far."""
    kinds = []
    decoder = json.JSONDecoder()
    text = bytes(out).decode().strip()
    while text:
        try:
            obj, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            break   # the last object is still being printed
        text = text[end:].strip()
        if obj.get("containerId") == object_id:
            kinds.append(obj.get("containerEventType", "CONTAINER_CREATED_EVENT"))   # 0 is omitted in JSON
    return kinds
