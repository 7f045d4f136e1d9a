"""Single-use tokens that stand for one Exec/Attach/PortForward request until the client connects.

The RPC puts the validated request here and returns a URL holding the token;
the streaming server consumes it exactly once. A token is 8 URL-safe
characters (48 random bits), lives `ttl` seconds, and at most `capacity` are
in flight so a caller spamming Exec cannot grow the daemon's memory.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cri_shim.errors import ResourceExhausted

T = TypeVar("T")

TOKEN_LENGTH = 8


@dataclass(frozen=True)
class _Entry(Generic[T]):
    request: T
    expires_at: float


class TokenCache(Generic[T]):
    def __init__(self, ttl: float = 60.0, capacity: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()  # insertion order = expiry order

    def __len__(self) -> int:
        self._evict_expired()
        return len(self._entries)

    def insert(self, request: T) -> str:
        self._evict_expired()
        if len(self._entries) >= self._capacity:
            raise ResourceExhausted(f"too many streaming requests in flight ({self._capacity}); "
                                    f"unused URLs expire after {self._ttl:g} s, retry then")
        while True:
            token = secrets.token_urlsafe(6)  # 6 bytes -> exactly 8 base64url characters
            if token not in self._entries:
                break
        self._entries[token] = _Entry(request, self._clock() + self._ttl)
        return token

    def consume(self, token: str) -> T | None:
        """The request for `token` once; None if unknown, already used or expired."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry.request

    def _evict_expired(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            del self._entries[token]
