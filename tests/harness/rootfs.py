"""A directory root filesystem built from Debian's busybox-static, for runtime tests.

`/bin/busybox` plus one hard link per applet, /etc/passwd and /etc/group with
a few users, and the usual empty directories. Used as the single lower layer
of a container's overlay until the image snapshots are available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
tty:x:5:
nogroup:x:65534:
app:x:1000:
extra:x:1234:app
"""


def build_busybox_rootfs(dest: Path) -> Path:
    if not BUSYBOX.exists():
        raise RuntimeError("busybox-static is not installed (apt-get install busybox-static)")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app",
              "var/log", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in applets:
        if name in ("busybox", "[[") or "/" in name:
            continue
        target = dest / "bin" / name
        if not target.exists():
            os.link(dest / "bin/busybox", target)
    (dest / "etc/passwd").write_text(PASSWD)
    (dest / "etc/group").write_text(GROUP)
    (dest / "etc/hostname").write_text("image-hostname\n")
    return dest
