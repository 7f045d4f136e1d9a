"""runtime.linux.shim_runc.runc_spec: runc's copy of the daemon's spec adds only what the native init adds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from runtime.linux.shim_runc import CreateRequest, PodMounts, runc_spec

SHM = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "size=65536k"]}


def spec(ipc_path: str = "/pod/ns/ipc", mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"process": {"args": ["sh"], "terminal": False}, "root": {"path": "rootfs"},
            "mounts": mounts if mounts is not None else [SHM],
            "linux": {"namespaces": [{"type": "ipc", "path": ipc_path}, {"type": "mount"}]}}


def request(**kw: Any) -> CreateRequest:
    base: dict[str, Any] = {"root_path": "/b/rootfs", "layers": (), "upper": "", "work": "", "readonly": False,
                            "cgroups_path": "/cri-shim/pod/c1", "terminal": False}
    return CreateRequest(**{**base, **kw})


def test_root_cgroup_and_terminal_come_from_the_shim_and_the_input_is_not_changed() -> None:
    original = spec()
    before = copy.deepcopy(original)
    out = runc_spec(original, request(readonly=True, terminal=True), PodMounts("", "", ""))
    assert out["root"] == {"path": "/b/rootfs", "readonly": True}
    assert out["linux"]["cgroupsPath"] == "/cri-shim/pod/c1"
    assert out["process"]["terminal"] is True
    assert original == before


def test_the_pod_shm_is_stacked_over_the_spec_tmpfs_only_in_the_pod_ipc_namespace() -> None:
    pod = PodMounts(sandbox_dir="", shm="/pod/shm", ipc_pin="/pod/ns/ipc")
    out = runc_spec(spec(), request(), pod)
    assert [(m["destination"], m["type"], m["source"]) for m in out["mounts"]] == [
        ("/dev/shm", "tmpfs", "shm"), ("/dev/shm", "bind", "/pod/shm")]
    other = runc_spec(spec(ipc_path="/elsewhere"), request(), pod)
    assert other["mounts"] == [SHM]


def test_sandbox_files_are_bound_when_present_and_not_mounted_by_the_spec(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    (tmp_path / "hostname").write_text("pod\n")   # resolv.conf missing: not bound
    own_hostname = {"destination": "/etc/hostname", "type": "bind", "source": "/mine", "options": ["rbind"]}
    out = runc_spec(spec(mounts=[own_hostname]), request(), PodMounts(str(tmp_path), "", ""))
    assert [(m["destination"], m["source"]) for m in out["mounts"]] == [
        ("/etc/hostname", "/mine"), ("/etc/hosts", str(tmp_path / "hosts"))]
