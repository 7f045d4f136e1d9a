"""The single-instance lock of the daemon's root directory on Windows (fcntl.flock's counterpart there).

`msvcrt.locking` locks a byte range of `<root>/cri-shim.lock` (LockFile
underneath): Windows releases it when the process dies, so a crashed daemon
never leaves a stale lock. The locked byte lies far past the pid the holder
writes at offset 0, because a locked range cannot even be read by another
process, and a second daemon should say who holds the directory. msvcrt is
injected so the logic runs on Linux against a byte-range-lock stand-in; only a
Windows node can show the real LockFile semantics (windows_only).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri_shim.errors import StartupError

LOCK_OFFSET = 1 << 20       # past any pid text; LockFile may lock beyond the end of the file


def lock_root(path: Path, what: str, msvcrt: Any = None) -> Callable[[], None]:
    """Lock `path` for this process or raise StartupError naming the holder; the function that releases it."""
    m = msvcrt if msvcrt is not None else importlib.import_module("msvcrt")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise StartupError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        m.locking(fd, m.LK_NBLCK, 1)
    except OSError:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"another cri-shim (pid {holder}) is already using {what}; stop it or give this "
                           "instance its own --root and --state (and windows.grpc_port / windows.pipe)") from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())

    def release() -> None:
        try:
            os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
            m.locking(fd, m.LK_UNLCK, 1)
        except OSError:
            pass            # closing the file releases it too
        os.close(fd)

    return release
