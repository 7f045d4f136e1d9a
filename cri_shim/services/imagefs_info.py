"""ImageFsInfo: real bytes and inodes used by the image store.

It is the connection check of every image client and drives kubelet's image
garbage collection, so it must always answer and must count what is on disk
(allocated blocks, each inode once even when hard-linked). The counting is
`ImageStore.disk_usage`: unpacked snapshots are measured once, when they are
made; blobs and anything else under the store are walked on each call.
"""

from __future__ import annotations

import time
from pathlib import Path

from cri_shim.api import api_pb2 as pb
from cri_shim.images.snapshots import Usage


def image_fs_info(usage: Usage, mountpoint: Path) -> pb.ImageFsInfoResponse:
    fs = pb.FilesystemUsage(
        timestamp=time.time_ns(),
        fs_id=pb.FilesystemIdentifier(mountpoint=str(mountpoint)),
        used_bytes=pb.UInt64Value(value=usage.bytes),
        inodes_used=pb.UInt64Value(value=usage.inodes),
    )
    return pb.ImageFsInfoResponse(image_filesystems=[fs])
