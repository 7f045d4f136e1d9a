"""The daemon imports on a Windows node: every module it loads there, with the POSIX-only modules gone.

Windows has no fcntl, pwd, grp, termios, resource, pty or tty, pyroute2 does not
install there, and `runtime.linux` must never be loaded. A child interpreter
blocks exactly those (a meta path finder that raises ImportError, as the missing
modules would) and imports every module below; a Linux-only import that creeps
onto the daemon's import path fails here, not on a Windows node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Imported only where the Linux pieces are built (a Linux node): the built-in bridge network (pyroute2).
LINUX_ONLY = {"cri_shim.network.builtin"}
NOT_IMPORTED = {"cri_shim.__main__"}   # runs the CLI when imported

PROBE = r"""
import importlib, importlib.abc, json, sys
BLOCK = {"fcntl", "pwd", "grp", "termios", "resource", "pyroute2", "pty", "tty"}

class NotOnWindows(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK or name == "runtime.linux" or name.startswith("runtime.linux."):
            raise ImportError(f"{name} does not exist on Windows")
        return None

for name in [m for m in list(sys.modules) if m.split(".")[0] in BLOCK]:
    del sys.modules[name]   # none should be loaded this early; make sure
sys.meta_path.insert(0, NotOnWindows())
failed = {}
for module in json.loads(sys.argv[1]):
    try:
        importlib.import_module(module)
    except ImportError as e:
        failed[module] = str(e)
print(json.dumps(failed))
"""


def module_names(package: str) -> list[str]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def import_on_windows(modules: list[str]) -> dict[str, str]:
    """{module: why it failed} for the modules that cannot be imported without the POSIX-only modules."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    failed: dict[str, str] = json.loads(done.stdout)
    return failed


def daemon_modules() -> list[str]:
    cri_shim = [m for m in module_names("cri_shim") if m not in LINUX_ONLY | NOT_IMPORTED]
    runtime = [m for m in module_names("runtime") if not m.startswith(("runtime.linux", "runtime.external"))]
    return cri_shim + runtime


def test_every_daemon_module_imports_without_the_posix_only_modules() -> None:
    modules = daemon_modules()
    assert {"cri_shim.cli", "cri_shim.app", "cri_shim.server.runtime_service", "cri_shim.images.store",
            "cri_shim.services.sandbox_run", "cri_shim.network.manager", "cri_shim.streaming.server",
            "cri_shim.windows_node", "runtime.windows.backend"} <= set(modules)
    assert import_on_windows(modules) == {}


def test_the_probe_catches_a_linux_only_import() -> None:
    failed = import_on_windows(["cri_shim.network.builtin", "runtime.linux.netns", "cri_shim.errors"])
    assert set(failed) == {"cri_shim.network.builtin", "runtime.linux.netns"}
    assert "does not exist on Windows" in failed["runtime.linux.netns"]
