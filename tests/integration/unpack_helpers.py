"""Helpers shared by the unpack tests: a private work dir with a sentinel tree, and tree listings."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tests.harness.daemon import make_workdir


def listing(root: Path, xattrs: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything an unpack can change, per path: type, mode, owner, size, mtime, content, link, xattrs, rdev."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(dirpath, name)
            st = p.lstat()
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            attrs: object = ()
            if xattrs and not stat.S_ISLNK(st.st_mode):
                attrs = tuple(sorted((a, os.getxattr(p, a, follow_symlinks=False))
                                     for a in os.listxattr(p, follow_symlinks=False)))
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                                             st.st_mtime_ns, content, attrs, st.st_rdev, st.st_nlink
                                             if not stat.S_ISDIR(st.st_mode) else 0)
    return out


@dataclass
class Workspace:
    """`target` (empty, to unpack into) next to `outside` (a sentinel tree nothing may touch)."""

    base: Path
    target: Path
    outside: Path

    def outside_state(self) -> tuple[dict[str, tuple[object, ...]], list[str], tuple[int, int]]:
        st = self.outside.lstat()
        return listing(self.outside), sorted(os.listdir(self.base)), (stat.S_IMODE(st.st_mode), st.st_mtime_ns)

    def fresh_target(self) -> Path:
        shutil.rmtree(self.target)
        self.target.mkdir()
        return self.target


def workspace() -> Iterator[Workspace]:
    base = make_workdir("unpack")
    target = base / "target"
    outside = base / "outside"
    target.mkdir()
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"secret")
    (outside / "secret").chmod(0o400)
    (outside / "dir" / "file").write_bytes(b"file")
    (outside / "link").symlink_to("secret")
    try:
        yield Workspace(base, target, outside)
    finally:
        shutil.rmtree(base, ignore_errors=True)


class PipeStream:
    """A non-seekable stream: bytes written by a thread into a pipe, read from the other end."""

    def __init__(self, data: bytes) -> None:
        r, w = os.pipe()
        self.reader: BinaryIO = os.fdopen(r, "rb")
        self._thread = threading.Thread(target=self._feed, args=(w, data), daemon=True)
        self._thread.start()

    @staticmethod
    def _feed(fd: int, data: bytes) -> None:
        try:
            with os.fdopen(fd, "wb") as w:
                w.write(data)
        except BrokenPipeError:
            pass

    def close(self) -> None:
        self.reader.close()
        self._thread.join(10)
