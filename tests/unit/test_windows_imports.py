"""The daemon imports on a Windows node: every module it loads there, with the POSIX-only modules gone.

A child interpreter (tests/harness/not_windows.py) blocks fcntl, pwd, grp, termios,
resource, pty, tty, pyroute2 and runtime.linux, as a Windows node lacks them, and
imports every module below; a Linux-only import that creeps onto the daemon's
import path fails here, not on a Windows node.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import not_windows

REPO = Path(__file__).resolve().parents[2]

# Imported only where the Linux pieces are built (a Linux node): the built-in bridge network (pyroute2).
LINUX_ONLY = {"cri_shim.network.builtin"}
NOT_IMPORTED = {"cri_shim.__main__"}   # runs the CLI when imported


def module_names(package: str) -> list[str]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def daemon_modules() -> list[str]:
    cri_shim = [m for m in module_names("cri_shim") if m not in LINUX_ONLY | NOT_IMPORTED]
    runtime = [m for m in module_names("runtime") if not m.startswith(("runtime.linux", "runtime.external"))]
    return cri_shim + runtime


def test_every_daemon_module_imports_without_the_posix_only_modules() -> None:
    modules = daemon_modules()
    assert {"cri_shim.cli", "cri_shim.app", "cri_shim.server.runtime_service", "cri_shim.images.store",
            "cri_shim.services.sandbox_run", "cri_shim.network.manager", "cri_shim.streaming.server",
            "cri_shim.windows_node", "runtime.windows.backend"} <= set(modules)
    assert not_windows.import_all(modules) == {}


def test_the_probe_catches_a_linux_only_import() -> None:
    failed = not_windows.import_all(["cri_shim.network.builtin", "runtime.linux.netns", "cri_shim.errors"])
    assert set(failed) == {"cri_shim.network.builtin", "runtime.linux.netns"}
    assert "does not exist on Windows" in failed["runtime.linux.netns"]
