"""glibc malloc settings for a daemon that streams image layers a MiB at a time.

A layer pull allocates and frees MiB-sized buffers all the time (zlib's
output, tarfile's joins, socket reads) on several threads at once. With
glibc's defaults the thread arenas give that memory back to the kernel
(madvise) as soon as a little is free at their top, and the next buffer
faults every page in again: measured on the bench image (bench/pull.py),
~160,000 page faults per 200 MB pull, about a quarter of the daemon's CPU
for the pull. Keeping up to TRIM_THRESHOLD free per arena and serving
buffers below MMAP_THRESHOLD from the arenas removes nearly all of them;
the price is that each arena keeps its high-water mark of freed memory
(a few MiB per layer thread) instead of returning it at once.

Settings the operator gave through the environment (MALLOC_*_ or
GLIBC_TUNABLES) win. Not glibc (musl, Windows): nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1   # <malloc.h>
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 16 << 20
MMAP_THRESHOLD = 8 << 20
OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def tune_for_streaming() -> bool:
    """Apply the thresholds above to this process; True if they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in OPERATOR_SETTINGS):
        log.debug("malloc: keeping the operator's settings from the environment")
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc: musl's mallopt does nothing
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
    log.debug("malloc: trim threshold %d, mmap threshold %d%s", TRIM_THRESHOLD, MMAP_THRESHOLD,
              "" if applied else " (refused by mallopt)")
    return applied
