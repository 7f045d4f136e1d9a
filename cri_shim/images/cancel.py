"""Cancelling blocking work that runs on threads.

A pull runs on worker threads blocked in socket reads; asyncio cancellation
cannot reach them. A `CancelToken` is checked between steps, and cancelling
it also shuts down every socket registered with it, so a thread blocked in
recv() returns at once instead of waiting for the progress timeout.
"""

from __future__ import annotations

import socket
import threading

from cri_shim.errors import CriError


class Cancelled(CriError):
    """The work was cancelled (every caller left, or the daemon is stopping)."""

    code_name = "CANCELLED"


class CancelToken:
    def __init__(self, what: str) -> None:
        self._what = what
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing to interrupt

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(f"{self._what} cancelled: {self.reason}")

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            cancelled = self._event.is_set()
        if cancelled:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
