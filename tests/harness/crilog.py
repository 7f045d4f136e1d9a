"""Read CRI container log files the way kubelet does for `kubectl logs` (k8s.io/cri-client pkg/logs ReadLogs).

File format, one record per line: `<RFC3339Nano time> <stdout|stderr> <tag>[:<tag>...] <content>\\n`, where the
first tag is `P` (partial: the content continues in the next record, its newline is not part of the output)
or `F` (full). kubelet's reader, reproduced here:
- a record that does not parse is skipped (the reader logs it and goes on);
- `tail=N` starts at the N-th last *record* of the file (partial records count), and stops after N records;
- `timestamps` prefixes a record only when it starts a new output line (not the continuation of a partial);
  the prefix is the record's time with 9 fraction digits, `Z` for a zero offset;
- stdout and stderr are separate outputs; asking for one stream still walks the other's records;
- only the current file is read: rotated files (`<log>.<time>`, `<log>.<time>.gz`) are not (that is what
  `kubectl logs` shows). `read_all_rotations` is the test's own reader over every file, oldest first.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP = re.compile(rb"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
STREAMS = (b"stdout", b"stderr")


@dataclass(frozen=True)
class Record:
    time: bytes        # normalised like Go's RFC3339NanoFixed: 9 fraction digits, Z for a zero offset
    stream: str
    partial: bool
    content: bytes     # without the newline of a partial record


def normalise_time(raw: bytes) -> bytes | None:
    m = TIMESTAMP.match(raw)
    if m is None:
        return None
    base, fraction, zone = m.group(1), (m.group(2) or b"").ljust(9, b"0"), m.group(3)
    if zone in (b"+00:00", b"-00:00"):
        zone = b"Z"
    return base + b"." + fraction + zone


def parse_record(line: bytes) -> Record | None:
    """One file line (with its trailing newline, if any) -> Record, or None when kubelet would skip it."""
    parts = line.split(b" ", 3)
    if len(parts) < 4:
        return None
    time, stream, tags, content = parts
    stamp = normalise_time(time)
    if stamp is None or stream not in STREAMS:
        return None
    partial = tags.split(b":")[0] == b"P"
    if partial and content.endswith(b"\n"):
        content = content[:-1]
    return Record(stamp, stream.decode(), partial, content)


def file_lines(data: bytes) -> list[bytes]:
    """Split on \\n only, keeping it (a \\r inside a record is content, as for Go's ReadBytes('\\n'))."""
    lines = [part + b"\n" for part in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def tail_start(data: bytes, n: int | None) -> int:
    """kubelet's findTailLineStartIndex: the offset after which the file holds at most n newlines (so, for a
    file ending in a newline, the start of its last n records)."""
    if n is None or n < 0:
        return 0
    count = data.count(b"\n")
    start = 0
    while count > n:
        start = data.index(b"\n", start) + 1
        count -= 1
    return start


def read_logs(path: Path, *, tail: int | None = None, timestamps: bool = False) -> dict[str, bytes]:
    """What `kubectl logs` / `crictl logs` print for this log file: {"stdout": ..., "stderr": ...}."""
    data = Path(path).read_bytes()
    out = {"stdout": bytearray(), "stderr": bytearray()}
    remaining = tail if tail is not None and tail >= 0 else -1
    new_line = True
    for line in file_lines(data[tail_start(data, tail):]):
        if remaining == 0:
            break
        record = parse_record(line)
        if record is None:
            continue
        text = record.content
        if timestamps and new_line:
            text = record.time + b" " + text
        out[record.stream] += text
        if remaining > 0:
            remaining -= 1
        new_line = not record.content or record.content.endswith(b"\n")
    return {k: bytes(v) for k, v in out.items()}


def rotated_files(path: Path) -> list[Path]:
    """The rotated siblings of a log, oldest first (kubelet names them <log>.<YYYYmmdd-HHMMSS>[.gz])."""
    return sorted(p for p in path.parent.glob(path.name + ".*") if not p.name.endswith(".tmp"))


def read_all_rotations(path: Path) -> bytes:
    """Every record's content over the rotated files and the current one, in order, as one stdout+stderr text."""
    chunks = []
    for f in [*rotated_files(path), path]:
        if not f.exists():
            continue
        raw = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        for line in file_lines(raw):
            record = parse_record(line)
            if record is not None:
                chunks.append(record.content)
    return b"".join(chunks)
