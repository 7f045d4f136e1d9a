"""The snapshot store: each image layer unpacked once, in `<root>/snapshots/<chain id hex>/`.

A snapshot directory is a finished overlay lowerdir: the layer's files with
whiteouts already in overlay's form. It is keyed by the layer's chain id
(OCI image-spec: the identity of the layer together with everything below
it), so images that share a base share its snapshots.

A layer is unpacked into `.tmp-<random>/` and renamed to its chain id only
once the unpack finished and the digests checked out; removal renames to
`.trash-<random>/` first. Either way a snapshot under its name is complete,
and leftovers of a crash are deleted at startup.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class Usage:
    bytes: int
    inodes: int

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.bytes + other.bytes, self.inodes + other.inodes)


ZERO = Usage(0, 0)


def chain_ids(diff_ids: tuple[str, ...]) -> tuple[str, ...]:
    """OCI chain ids: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return tuple(out)


def disk_usage(*paths: Path, skip: frozenset[str] = frozenset()) -> Usage:
    """Allocated bytes and inodes under `paths` (each inode once, hard links included); `skip` subtrees not walked."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack: list[str] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        stack.append(str(path))
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed while we walked: it no longer uses space
        for entry in entries:
            if entry.path in skip:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return Usage(bytes=total, inodes=len(seen))


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        """Create the directory and delete what a crash left half-made or half-removed."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                log.info("removing a leftover snapshot directory of a previous run: %s", entry.name)
                shutil.rmtree(entry, ignore_errors=True)

    def path(self, chain_id: str) -> Path:
        algorithm, _, hex_part = chain_id.partition(":")
        if algorithm != "sha256" or len(hex_part) != 64:
            raise ValueError(f"not a sha256 chain id: {chain_id!r}")
        return self.root / hex_part

    def exists(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def new_temp(self) -> Path:
        """An empty directory to unpack into; `commit` or `discard` it."""
        path = self.root / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)  # mkdir's mode is narrowed by the umask; a lowerdir root must be 0755
        return path

    def commit(self, temp: Path, chain_id: str) -> bool:
        """Rename `temp` to the snapshot; False (and `temp` discarded) if another pull made it first."""
        try:
            os.rename(temp, self.path(chain_id))
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            self.discard(temp)
            return False
        return True

    def discard(self, temp: Path) -> None:
        shutil.rmtree(temp, ignore_errors=True)

    def move_to_trash(self, chain_id: str) -> Path:
        """Make the snapshot disappear at once (a rename); `empty_trash` deletes the files later."""
        trash = self.root / f"{TRASH_PREFIX}{secrets.token_hex(8)}"
        try:
            os.rename(self.path(chain_id), trash)
        except FileNotFoundError:
            pass
        return trash

    def empty_trash(self, trash: Path) -> None:
        shutil.rmtree(trash, ignore_errors=True)

    def chain_ids(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.root.iterdir()
                if not p.name.startswith(".") and len(p.name) == 64}

    def sync(self) -> None:
        """syncfs() the filesystem of the store: unpacked files reach the disk before the image is recorded."""
        # CDLL(None): libc is already loaded; find_library("c") would spawn ldconfig on every pull.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)
