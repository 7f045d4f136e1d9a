"""Small, fast file helpers for cgroupfs (one open/read or open/write per call)."""

from __future__ import annotations

import os
from pathlib import Path

_CHUNK = 65536


def read(path: Path | str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def write(path: Path | str, value: str) -> None:
    """One write(2) call: cgroupfs parses each write on its own, so values must not be split.

    O_TRUNC is ignored by cgroupfs (as for `echo v > file`) and keeps fake trees in tests exact.
    """
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_int(path: Path | str) -> int | None:
    """The first number in a file; None if the file is missing, "max" or unparsable."""
    try:
        return int(read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_keyed(path: Path | str) -> dict[str, int]:
    """A "key value" per line file (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    try:
        return parse_keyed(read(path))
    except OSError:
        return {}


def parse_keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out
