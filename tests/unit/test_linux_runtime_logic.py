"""Pure logic of the Linux runtime: CRI log records, OCI spec building, spec validation, protocol framing."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from runtime import oci
from runtime.linux import protocol as proto
from runtime.linux import syscalls as sc
from runtime.linux.logs import CriLogWriter, rfc3339nano
from runtime.linux.spec import SpecError, check_sysctl, container_plan, mount_plan

# ---------------------------------------------------------------- CRI logs


def _writer(tmp_path: Path, max_line: int = 16) -> CriLogWriter:
    ticks = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1000))
    w = CriLogWriter(str(tmp_path / "sub/ctr.log"), max_line=max_line, clock=lambda: next(ticks))
    w.open()
    return w


def _records(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_text().split("\n")[:-1]:
        _ts, stream, tag, content = line.split(" ", 3)
        out.append((stream, tag, content))
    return out


def test_timestamps_are_rfc3339nano_with_trailing_zeros_trimmed() -> None:
    assert rfc3339nano(1_475_713_029_669_794_202) == b"2016-10-06T00:17:09.669794202Z"
    assert rfc3339nano(1_475_713_029_669_000_000) == b"2016-10-06T00:17:09.669Z"
    assert rfc3339nano(1_475_713_029_000_000_000) == b"2016-10-06T00:17:09Z"


def test_complete_lines_are_full_records_and_crlf_is_dropped(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.feed("stdout", b"one\ntw")
    w.feed("stderr", b"err\r\n")
    w.feed("stdout", b"o\n\n")
    assert _records(tmp_path / "sub/ctr.log") == [
        ("stdout", "F", "one"), ("stderr", "F", "err"), ("stdout", "F", "two"), ("stdout", "F", "")]


def test_long_lines_become_partial_records_then_a_full_one(tmp_path: Path) -> None:
    w = _writer(tmp_path, max_line=4)
    w.feed("stdout", b"abcdefghij\n")
    w.feed("stdout", b"abcd\n")   # exactly the maximum: one full record
    assert _records(tmp_path / "sub/ctr.log") == [
        ("stdout", "P", "abcd"), ("stdout", "P", "efgh"), ("stdout", "F", "ij"), ("stdout", "F", "abcd")]


def test_a_trailing_partial_line_is_written_as_partial_at_end_of_stream(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.feed("stdout", b"done\nno newline")
    w.end("stdout")
    w.end("stderr")
    assert _records(tmp_path / "sub/ctr.log") == [("stdout", "F", "done"), ("stdout", "P", "no newline")]


def test_reopen_recreates_the_file_at_the_same_path(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.feed("stdout", b"before\n")
    os.rename(tmp_path / "sub/ctr.log", tmp_path / "rotated")
    w.reopen()
    assert (tmp_path / "sub/ctr.log").exists()
    w.feed("stdout", b"after\n")
    assert _records(tmp_path / "sub/ctr.log") == [("stdout", "F", "after")]
    assert _records(tmp_path / "rotated") == [("stdout", "F", "before")]


def test_no_log_path_means_no_file(tmp_path: Path) -> None:
    w = CriLogWriter(None)
    w.open()
    w.feed("stdout", b"x\n")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- OCI spec


def _config(**kw: object) -> oci.ContainerConfig:
    return oci.ContainerConfig(process=oci.Process(args=("sh",)), linux=oci.LinuxConfig(cgroups_path="/x/y"),
                               **kw)  # type: ignore[arg-type]


def test_default_spec_has_containerd_defaults() -> None:
    spec = oci.build(_config())
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert spec["linux"]["maskedPaths"] == list(oci.DEFAULT_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(oci.DEFAULT_READONLY_PATHS)
    assert spec["process"]["capabilities"]["bounding"] == list(oci.DEFAULT_CAPABILITIES)
    assert spec["process"]["capabilities"]["inheritable"] == []
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert "windows" not in spec


def test_extra_mounts_replace_defaults_at_the_same_destination_and_set_root_propagation() -> None:
    spec = oci.build(_config(mounts=(oci.Mount("/dev/shm", "/pod/shm", "bind", ("rbind",)),
                                     oci.Mount("/data", "/host", "bind", ("rbind", "rslave")))))
    shm = [m for m in spec["mounts"] if m["destination"] == "/dev/shm"]
    assert shm == [{"destination": "/dev/shm", "source": "/pod/shm", "type": "bind", "options": ["rbind"]}]
    assert spec["linux"]["rootfsPropagation"] == "rslave"


def test_empty_masked_paths_mean_unmasked() -> None:
    spec = oci.build(oci.ContainerConfig(process=oci.Process(args=("sh",)),
                                         linux=oci.LinuxConfig(cgroups_path="/x", masked_paths=(),
                                                               readonly_paths=())))
    assert spec["linux"]["maskedPaths"] == [] and spec["linux"]["readonlyPaths"] == []


def test_spec_is_platform_tagged() -> None:
    with pytest.raises(ValueError):
        oci.build(oci.ContainerConfig(process=oci.Process(args=("x",))))
    spec = oci.build(oci.ContainerConfig(process=oci.Process(args=("cmd.exe",)),
                                         windows=oci.WindowsConfig({"layerFolders": ["C:\\l"]})))
    assert "linux" not in spec and spec["windows"] == {"layerFolders": ["C:\\l"]}
    assert "rlimits" not in spec["process"]


def test_write_is_atomic_readable_json(tmp_path: Path) -> None:
    path = oci.write(tmp_path / "bundle", oci.build(_config()))
    text = path.read_text()
    assert text.startswith("{\n  ") and json.loads(text)["ociVersion"] == oci.OCI_VERSION
    assert oci.read(tmp_path / "bundle")["process"]["args"] == ["sh"]
    assert [p.name for p in (tmp_path / "bundle").iterdir()] == ["config.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="no OCI runtime spec"):
        oci.read(tmp_path / "nowhere")


# ---------------------------------------------------------------- spec validation


def _plan(spec: dict[str, object]) -> object:
    return container_plan(spec, "/bundle")


def _spec(**process: object) -> dict[str, object]:
    spec = oci.build(_config())
    spec["process"].update(process)  # type: ignore[attr-defined]
    return spec


@pytest.mark.parametrize(("process", "field"), [
    ({"args": []}, "process.args"),
    ({"args": [""]}, "process.args"),
    ({"env": ["NOEQUALS"]}, "process.env[0]"),
    ({"cwd": "relative"}, "process.cwd"),
    ({"user": {"uid": 2**32 - 1, "gid": 0}}, "process.user.uid"),
    ({"user": {"uid": -1, "gid": 0}}, "process.user.uid"),
    ({"user": {"uid": 0, "gid": 0, "additionalGids": [2**33]}}, "process.user.additionalGids[0]"),
    ({"rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}, "process.rlimits[0].type"),
    ({"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 1}]}, "process.rlimits[0]"),
    ({"oomScoreAdj": 5000}, "process.oomScoreAdj"),
])
def test_bad_process_fields_are_named(process: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as e:
        _plan(_spec(**process))
    assert e.value.field == field


def test_namespace_rules() -> None:
    spec = _spec()
    spec["linux"]["namespaces"] = [{"type": "pid"}]  # type: ignore[index]
    with pytest.raises(SpecError, match="mount namespace"):
        _plan(spec)
    spec["linux"]["namespaces"] = [{"type": "mount"}, {"type": "user"}]  # type: ignore[index]
    with pytest.raises(SpecError) as e:
        _plan(spec)
    assert e.value.unsupported
    spec["linux"]["namespaces"] = [{"type": "mount"}, {"type": "network", "path": "/etc/passwd"}]  # type: ignore[index]
    with pytest.raises(SpecError) as e:
        _plan(spec)
    assert e.value.field == "linux.namespaces[1].path" and "not a namespace" in e.value.message
    spec["linux"]["namespaces"] = [{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/ipc"}]  # type: ignore[index]
    with pytest.raises(SpecError, match="not a network namespace"):
        _plan(spec)


def test_mount_options_parse_into_flags_propagation_and_data() -> None:
    m = mount_plan({"destination": "/d", "source": "/", "type": "bind",
                    "options": ["rbind", "ro", "nosuid", "rslave"]}, 0)
    assert m.bind and m.flags & sc.MS_REC and m.flags & sc.MS_RDONLY and m.flags & sc.MS_NOSUID
    assert m.propagation == (sc.MS_SLAVE | sc.MS_REC,)
    t = mount_plan({"destination": "/t", "source": "tmpfs", "type": "tmpfs", "options": ["nosuid", "size=1m"]}, 3)
    assert not t.bind and t.data == "size=1m"
    with pytest.raises(SpecError) as e:
        mount_plan({"destination": "/d", "source": "/no/such/dir", "type": "bind", "options": ["rbind"]}, 4)
    assert e.value.field == "mounts[4].source"
    with pytest.raises(SpecError) as e:
        mount_plan({"destination": "rel", "source": "x", "type": "tmpfs"}, 5)
    assert e.value.field == "mounts[5].destination"


@pytest.mark.parametrize(("key", "value"), [
    ("kernel.core_pattern", "|/x"),                       # not namespaced: the host's
    ("net.ipv4.ip_forward", "1+kernel.core_pattern=x"),   # CVE-2022-0811 injection
    ("net.ipv4.ip_forward", "1\nkernel.x=1"),
    ("../../etc/passwd", "1"),
    ("vm.swappiness", "1"),
])
def test_sysctls_are_refused_when_unsafe(key: str, value: str) -> None:
    with pytest.raises(SpecError):
        check_sysctl(key, value, "sysctl")


def test_namespaced_sysctls_are_accepted() -> None:
    for key in ("net.ipv4.ip_unprivileged_port_start", "kernel.shm_rmid_forced", "kernel.msgmax", "fs.mqueue.msg_max"):
        check_sysctl(key, "1", "sysctl")


# ---------------------------------------------------------------- protocol


def test_protocol_carries_json_and_fds_in_one_message() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        proto.send(a, proto.request("exec", id="x"), [r])
        proto.send(a, proto.ok(n=2))
        msg, fds = proto.recv(b)
        assert msg == {"v": proto.VERSION, "op": "exec", "id": "x"} and len(fds) == 1
        os.write(w, b"through")
        assert os.read(fds[0], 16) == b"through"
        os.close(fds[0])
        assert proto.recv(b) == ({"ok": True, "n": 2}, [])
        a.close()
        assert proto.recv(b) == (None, [])
    finally:
        for fd in (r, w):
            os.close(fd)
        b.close()


def test_protocol_rejects_garbage() -> None:
    with pytest.raises(proto.ProtocolError):
        proto.decode(b"\xff\xfe")
    with pytest.raises(proto.ProtocolError):
        proto.decode(b"[1, 2]")
    assert proto.error(proto.INVALID_SPEC, "bad", "f") == {
        "ok": False, "error": {"kind": "invalid_spec", "message": "bad", "field": "f"}}
