"""The Windows root-directory lock (cri_shim/windows_lock.py) with a byte-range-lock stand-in for msvcrt.

`FcntlMsvcrt` implements msvcrt.locking's contract (lock / unlock n bytes at
the file position, non-blocking, OSError when another process holds them) with
POSIX byte-range locks, which like LockFile belong to the process and die with
it. The second daemon is a real second process. What this cannot show is
LockFile itself (mandatory locking, release on process death on Windows):
that is the windows_only test.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cri_shim import windows_lock
from cri_shim.errors import StartupError

ROOT = Path(__file__).resolve().parents[2]


class FcntlMsvcrt:
    LK_UNLCK = 0
    LK_NBLCK = 2

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        start = os.lseek(fd, 0, os.SEEK_CUR)
        op = fcntl.LOCK_UN if mode == self.LK_UNLCK else fcntl.LOCK_EX | fcntl.LOCK_NB
        fcntl.lockf(fd, op, nbytes, start)


CHILD = """
import sys
from pathlib import Path
from cri_shim import windows_lock
from cri_shim.errors import StartupError
from tests.windows.test_windows_lock import FcntlMsvcrt
try:
    release = windows_lock.lock_root(Path(sys.argv[1]), "root directory X", FcntlMsvcrt())
except StartupError as e:
    print("refused:", e)
else:
    print("locked")
    release()
"""


def second_daemon(lock: Path) -> str:
    out = subprocess.run([sys.executable, "-c", CHILD, str(lock)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_a_second_daemon_on_the_same_root_is_refused_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "cri-shim.lock"
    release = windows_lock.lock_root(lock, "root directory X", FcntlMsvcrt())
    try:
        # the child reads the holder's pid: the locked byte lies past it
        assert second_daemon(lock) == (f"refused: another cri-shim (pid {os.getpid()}) is already using root "
                                       "directory X; stop it or give this instance its own --root and --state "
                                       "(and windows.grpc_port / windows.pipe)")
    finally:
        release()
    # (read only now: closing any other descriptor of the file would drop this process's POSIX locks)
    assert lock.read_text() == f"{os.getpid()}\n"
    assert second_daemon(lock) == "locked"                      # released: the next daemon gets it


def test_an_unusable_lock_path_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot create lock file"):
        windows_lock.lock_root(tmp_path / "missing" / "cri-shim.lock", "root directory X", FcntlMsvcrt())


@pytest.mark.windows_only
def test_the_root_lock_uses_msvcrt_on_windows(tmp_path: Path) -> None:
    release = windows_lock.lock_root(tmp_path / "cri-shim.lock", "root directory X")
    try:
        with pytest.raises(StartupError, match="already using root directory X"):
            windows_lock.lock_root(tmp_path / "cri-shim.lock", "root directory X")   # LockFile is per handle
    finally:
        release()
