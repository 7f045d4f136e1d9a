"""Watching the CNI conf dir: reload the network config whenever it changes.

A cheap fingerprint of the conf dir (each candidate file's name, inode,
mtime and size) and of the plugin dirs (their mtimes, which change when a
plugin is installed or removed) is compared on every `current()` call; the
config is parsed again only when the fingerprint moved. So Status and pod
setup always see the directory as it is now (a config that appears is used
at once, with no watcher lag), and `run()` only polls in the background so
that transitions are logged when they happen, not when someone next asks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

from cri_shim.network.cni_config import CONF_EXTENSIONS, NetworkConfigStatus, find_network_config

log = logging.getLogger(__name__)

Fingerprint = tuple[object, ...]


class ConfWatcher:
    def __init__(self, conf_dir: Path, bin_dirs: list[str]) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self._lock = threading.Lock()
        self._fingerprint: Fingerprint | None = None
        self._status = NetworkConfigStatus(None, f"network config in {conf_dir} not read yet")

    def current(self) -> NetworkConfigStatus:
        """The usable network config (or why there is none), reloaded if the directories changed."""
        with self._lock:
            fingerprint = self._take_fingerprint()
            if fingerprint != self._fingerprint:
                previous = self._status
                self._status = find_network_config(self.conf_dir, self.bin_dirs)
                self._fingerprint = fingerprint
                if previous.message != self._status.message:
                    level = logging.INFO if self._status.ready else logging.WARNING
                    log.log(level, "CNI network config %s: %s",
                            "ready" if self._status.ready else "not ready", self._status.message)
            return self._status

    async def run(self, interval: float = 1.0) -> None:
        """Poll until cancelled, so config changes are picked up (and logged) promptly."""
        while True:
            await asyncio.to_thread(self.current)
            await asyncio.sleep(interval)

    def _take_fingerprint(self) -> Fingerprint:
        parts: list[object] = [_stat_key(self.conf_dir)]
        try:
            with os.scandir(self.conf_dir) as entries:
                for e in entries:
                    if e.name.endswith(CONF_EXTENSIONS):
                        try:
                            st = e.stat()
                        except OSError:
                            continue
                        parts.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            pass
        parts.extend(_stat_key(Path(d)) for d in self.bin_dirs)
        return tuple(sorted(parts, key=repr))


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), 0, 0)
    return (str(path), st.st_ino, st.st_mtime_ns)
