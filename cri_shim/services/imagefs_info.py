"""ImageFsInfo: real bytes and inodes used by the image store.

It is the connection check of every image client and drives kubelet's image
garbage collection, so it must always answer and must count what is on disk
(allocated blocks, each inode once even when hard-linked).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cri_shim.api import api_pb2 as pb


@dataclass(frozen=True)
class DiskUsage:
    used_bytes: int
    inodes_used: int


def disk_usage(*dirs: Path) -> DiskUsage:
    seen: set[tuple[int, int]] = set()
    used = 0
    stack = [str(d) for d in dirs if d.is_dir()]
    for d in stack:
        st = os.lstat(d)
        seen.add((st.st_dev, st.st_ino))
        used += st.st_blocks * 512
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed while we walked: it no longer uses space
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            used += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return DiskUsage(used_bytes=used, inodes_used=len(seen))


def image_fs_info(image_dirs: tuple[Path, ...], mountpoint: Path) -> pb.ImageFsInfoResponse:
    usage = disk_usage(*image_dirs)
    fs = pb.FilesystemUsage(
        timestamp=time.time_ns(),
        fs_id=pb.FilesystemIdentifier(mountpoint=str(mountpoint)),
        used_bytes=pb.UInt64Value(value=usage.used_bytes),
        inodes_used=pb.UInt64Value(value=usage.inodes_used),
    )
    return pb.ImageFsInfoResponse(image_filesystems=[fs])
