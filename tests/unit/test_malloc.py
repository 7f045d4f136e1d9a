"""The daemon's malloc thresholds: applied on glibc, and the operator's environment settings win."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = "from cri_shim import malloc; print(malloc.tune_for_streaming())"


def run(env: dict[str, str]) -> str:
    # A child process: mallopt changes the whole process, not something to do to the test runner.
    return subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=Path(__file__).parents[2], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_thresholds_are_applied_on_glibc() -> None:
    assert run({"PATH": "/usr/bin:/bin"}) == "True"


def test_operator_malloc_settings_in_the_environment_are_kept() -> None:
    assert run({"PATH": "/usr/bin:/bin", "MALLOC_TRIM_THRESHOLD_": "131072"}) == "False"
    assert run({"PATH": "/usr/bin:/bin", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}) == "False"
