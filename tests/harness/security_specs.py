"""OCI specs and runners shared by the security integration tests (process_security through secure_exec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.linux import capabilities, seccomp
from tests.harness.secure_exec import run

DEFAULT_MASK = capabilities.mask(capabilities.DEFAULT_CAPABILITIES)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
PYTHON = "/usr/bin/python3"


def make_spec(uid: int = 0, gid: int = 0, groups: tuple[int, ...] = (),
              request: capabilities.CapabilityRequest | None = None, nnp: bool = True,
              profile: str | dict[str, Any] | None = "default", **linux: Any) -> dict[str, Any]:
    caps = capabilities.oci_capabilities(request, privileged=False, uid=uid)
    if profile == "default":
        profile = seccomp.runtime_default_profile(caps["bounding"])
    if profile is not None:
        linux["seccomp"] = profile
    return {"process": {"user": {"uid": uid, "gid": gid, "additionalGids": list(groups)},
                        "capabilities": caps, "noNewPrivileges": nnp},
            "linux": {"namespaces": [{"type": "network"}, {"type": "ipc"}, {"type": "mount"}], **linux}}


def status_of(spec: dict[str, Any], **kw: Any) -> dict[str, str]:
    r = run(spec, ["/bin/cat", "/proc/self/status"], **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return {k: v.strip() for k, _, v in (line.partition(":") for line in r.stdout.splitlines())}


def caps_of(status: dict[str, str], name: str) -> int:
    return int(status[name], 16)


def make_root(workdir: Path) -> Path:
    root = workdir / "root"
    (root / "dir/sub").mkdir(parents=True)
    (root / "dir/sub/x").write_text("hidden")
    (root / "secret").write_text("s3cret")
    (root / "ro").mkdir()
    (root / "dev").mkdir()
    return root


def masked_run(root: Path, setup_extra: list[dict[str, Any]], script: str, **linux: Any) -> Any:
    setup = [{"unshare": CLONE_NEWNS}, *setup_extra, {"mask": str(root)}]
    return run(make_spec(**linux), ["/bin/sh", "-c", script], setup=setup)
