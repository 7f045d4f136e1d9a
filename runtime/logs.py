"""The CRI container log writer: the Linux pod shim and the Windows backend both write through it.

Format (k8s.io/cri-client parseCRILog, containerd's CRI logger):
    <RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\\n
- a line ending in "\\n" is written as F with the "\\n" (and one "\\r" before it) dropped;
- a line longer than `max_line` bytes is cut into P records of `max_line` bytes, then F;
- bytes left without a newline when the stream ends are written as one P record;
- one write(2) per record, so stdout and stderr interleave in whole records.

`reopen()` closes and reopens the same path (kubelet renamed it while rotating);
the file exists again when it returns.

Platform-neutral: os.O_CLOEXEC does not exist on Windows (where handles are not
inherited by default), so it is used only where the platform has it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
STREAMS = ("stdout", "stderr")


def rfc3339nano(ns: int) -> bytes:
    """UTC, nanoseconds with trailing zeros trimmed (Go's time.RFC3339Nano)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return (base + "Z").encode()


class CriLogWriter:
    def __init__(self, path: str | None, max_line: int = MAX_LINE,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.path = path
        self.max_line = max_line
        self._clock = clock
        self._fd = -1
        self._pending: dict[str, bytearray] = {s: bytearray() for s in STREAMS}
        self._write_failed = False

    def open(self) -> None:
        if self.path is None or self._fd >= 0:
            return
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        self.close_file()
        self.open()

    def close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def feed(self, stream: str, data: bytes) -> None:
        buf = self._pending[stream]
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + self.max_line + 1)
            if nl >= 0:
                line = bytes(buf[start:nl])
                if line.endswith(b"\r"):
                    line = line[:-1]
                self._record(stream, b"F", line)
                start = nl + 1
            elif len(buf) - start > self.max_line:
                self._record(stream, b"P", bytes(buf[start:start + self.max_line]))
                start += self.max_line
            else:
                break
        del buf[:start]

    def end(self, stream: str) -> None:
        """The stream reached EOF: a trailing partial line becomes a P record."""
        buf = self._pending[stream]
        if buf:
            self._record(stream, b"P", bytes(buf))
            buf.clear()

    def _record(self, stream: str, tag: bytes, content: bytes) -> None:
        if self._fd < 0:
            return
        line = b"".join((rfc3339nano(self._clock()), b" ", stream.encode(), b" ", tag, b" ", content, b"\n"))
        try:
            os.write(self._fd, line)
        except OSError as e:
            # A full disk must not stop the container; say so once per writer.
            if not self._write_failed:
                log.warning("cannot write container log %s: %s", self.path, e.strerror)
                self._write_failed = True
