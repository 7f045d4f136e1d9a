"""Name reservation: one live sandbox per pod metadata, one container per (pod, name, attempt).

kubelet retries RunPodSandbox/CreateContainer with the same metadata after a
timeout; the holder of a name is therefore reported in the AlreadyExists
message, and `inflight.py` decides whether the retry can take over the
finished object instead.
"""

from __future__ import annotations

import threading

from cri_shim.errors import AlreadyExists


class NameRegistry:
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def reserve(self, name: str, holder: str) -> None:
        with self._lock:
            current = self._names.get(name)
            if current is not None and current != holder:
                raise AlreadyExists(f"{self._kind} name {name!r} is reserved by {self._kind} {current}")
            self._names[name] = holder

    def holder(self, name: str) -> str | None:
        with self._lock:
            return self._names.get(name)

    def release(self, name: str, holder: str | None = None) -> None:
        with self._lock:
            if holder is None or self._names.get(name) == holder:
                self._names.pop(name, None)
