"""Which manifest of a multi-platform index this node runs.

Rules (containerd's platforms matcher, plus hcsshim's Windows build check):
os and architecture must be equal; a variant in the index must equal the
node's (arm64 treats an empty variant as v8); among matches an exact variant
wins over an empty one. A Windows node can only run images built for the same
build (major.minor.build of os.version); the revision may differ.
"""

from __future__ import annotations

import platform as host_platform
from collections.abc import Sequence

from cri_shim.errors import NotFound
from cri_shim.images.manifest import Descriptor, Platform

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}
_DEFAULT_VARIANT = {"arm64": "v8"}


def host() -> Platform:
    """The platform of this machine (Linux; a Windows build reports its os.version)."""
    machine = host_platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    variant = ""
    if arch == "arm":
        variant = "v6" if machine == "armv6l" else "v7"
    elif arch == "arm64":
        variant = "v8"
    system = host_platform.system().lower()
    if system == "windows":
        return Platform(os="windows", architecture=arch, os_version=host_platform.version())
    return Platform(os="linux", architecture=arch, variant=variant)


def parse(text: str) -> Platform:
    """`os/arch[/variant]`, as in the config file."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"expected os/architecture[/variant], got {text!r}")
    return Platform(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")


def _variant(p: Platform) -> str:
    return p.variant or _DEFAULT_VARIANT.get(p.architecture, "")


def _windows_build(version: str) -> str:
    return ".".join(version.split(".")[:3])


def matches(candidate: Platform, node: Platform) -> bool:
    if candidate.os != node.os or candidate.architecture != node.architecture:
        return False
    if candidate.variant and _variant(candidate) != _variant(node):
        return False
    if node.os == "windows" and node.os_version and candidate.os_version:
        return _windows_build(candidate.os_version) == _windows_build(node.os_version)
    return True


def select(manifests: Sequence[Descriptor], node: Platform, what: str) -> Descriptor:
    """The best manifest for `node`; NotFound listing what the index offers otherwise."""
    candidates = [m for m in manifests if m.platform is not None and matches(m.platform, node)]
    if not candidates:
        offered = ", ".join(sorted({str(m.platform) for m in manifests if m.platform})) or "no platforms"
        raise NotFound(f"{what} has no image for this node's platform {node} (it has: {offered})")
    exact = [m for m in candidates if m.platform is not None and m.platform.variant == node.variant]
    return (exact or candidates)[0]
