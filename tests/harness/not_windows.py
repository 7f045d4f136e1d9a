"""Run Python code in a child interpreter that looks like Windows to imports.

Windows has no fcntl, pwd, grp, termios, resource, pty or tty, pyroute2 does not
install there, and the daemon must never load `runtime.linux` there. The child
installs a meta path finder that raises ImportError for exactly those (as the
missing modules would) before anything else is imported, and records each
attempt, so a Linux-only import on the daemon's Windows path fails on Linux.
Everything else (ctypes, the real filesystem) is still Linux's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKER = r"""
import importlib.abc, sys
BLOCKED_ON_WINDOWS = {"fcntl", "pwd", "grp", "termios", "resource", "pyroute2", "pty", "tty"}

def _importer():
    # the first frame outside the import machinery: who asked for the module
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


class NotOnWindows(importlib.abc.MetaPathFinder):
    attempts = []   # (module, "file:line" that asked), in order (read by blocked_attempts() in the child)

    def find_spec(self, name, path, target=None):
        if (name.split(".")[0] in BLOCKED_ON_WINDOWS or name == "runtime.linux"
                or name.startswith("runtime.linux.")):
            self.attempts.append((name, _importer()))
            raise ImportError(f"{name} does not exist on Windows")
        return None

assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED_ON_WINDOWS or m.startswith("runtime.linux")]
sys.meta_path.insert(0, NotOnWindows())
"""

IMPORT_ALL = BLOCKER + r"""
import importlib, json
failed = {}
for module in json.loads(sys.argv[1]):
    try:
        importlib.import_module(module)
    except ImportError as e:
        failed[module] = str(e)
print(json.dumps(failed))
"""

RUN_MODULE = BLOCKER + r"""
import runpy
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def import_all(modules: list[str]) -> dict[str, str]:
    """{module: why it failed} for the modules that cannot be imported without the POSIX-only modules."""
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, json.dumps(modules)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    failed: dict[str, str] = json.loads(done.stdout)
    return failed


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` with the POSIX-only modules blocked; the module reads `blocked_attempts()`."""
    return subprocess.run([sys.executable, "-c", RUN_MODULE, module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def blocked_attempts() -> list[str]:
    """In the child: the blocked imports our own code (cri_shim, runtime) asked for, caught or not, as
    "module (file:line)". The standard library's and third parties' guarded imports (subprocess's
    `try: import fcntl`, tarfile's pwd/grp, prometheus_client's resource) are made for Windows and not listed."""
    ours = (str(REPO / "cri_shim"), str(REPO / "runtime"))
    for finder in sys.meta_path:
        if type(finder).__name__ == "NotOnWindows":
            attempts: list[tuple[str, str]] = getattr(finder, "attempts")
            return [f"{name} ({where})" for name, where in attempts if where.startswith(ours)]
    raise RuntimeError("not running under tests.harness.not_windows")
