"""The test suite's `kubectl logs` reader (tests/harness/crilog.py) on hand-written CRI log files.

The same reader is checked against crictl and kubelet's /containerLogs on real containers in tests/e2e."""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.harness.crilog import parse_record, read_all_rotations, read_logs

T1 = b"2026-11-28T08:00:00.123456789Z"
T2 = b"2026-11-28T08:00:01.5+00:00"


def write(tmp_path: Path, *lines: bytes, name: str = "0.log") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return path


def test_partial_records_join_into_one_line_and_streams_stay_apart(tmp_path: Path) -> None:
    log = write(tmp_path, T1 + b" stdout P hel\n", T1 + b" stderr F oops\n", T1 + b" stdout F lo\n")
    assert read_logs(log) == {"stdout": b"hello\n", "stderr": b"oops\n"}


def test_timestamps_prefix_only_the_start_of_an_output_line(tmp_path: Path) -> None:
    log = write(tmp_path, T1 + b" stdout P a\n", T2 + b" stdout F b\n", T2 + b" stdout F c\n")
    out = read_logs(log, timestamps=True)["stdout"]
    assert out == T1 + b" ab\n" + b"2026-11-28T08:00:01.500000000Z c\n"


def test_malformed_records_are_skipped(tmp_path: Path) -> None:
    log = write(tmp_path, b"garbage\n", b"2026-13 stdout F x\n", T1 + b" stdin F x\n", T1 + b" stdout F ok\n")
    assert read_logs(log)["stdout"] == b"ok\n"


def test_tail_counts_records_including_partials(tmp_path: Path) -> None:
    log = write(tmp_path, T1 + b" stdout F one\n", T1 + b" stdout P tw\n", T1 + b" stdout F o\n",
                T1 + b" stderr F three\n")
    assert read_logs(log, tail=2) == {"stdout": b"o\n", "stderr": b"three\n"}
    assert read_logs(log, tail=0) == {"stdout": b"", "stderr": b""}
    assert read_logs(log, tail=10)["stdout"] == b"one\ntwo\n"


def test_carriage_return_is_content_and_a_last_line_without_newline_is_read(tmp_path: Path) -> None:
    log = write(tmp_path, T1 + b" stdout F a\rb\n", T1 + b" stdout F end")
    assert read_logs(log)["stdout"] == b"a\rb\nend"


def test_extra_tags_after_the_first_are_ignored() -> None:
    record = parse_record(T1 + b" stdout P:x:y content\n")
    assert record is not None and record.partial and record.content == b"content"


def test_rotations_are_read_oldest_first_including_gzip(tmp_path: Path) -> None:
    current = write(tmp_path, T1 + b" stdout F 3\n")
    (tmp_path / "0.log.20261128-080000.gz").write_bytes(gzip.compress(T1 + b" stdout F 1\n"))
    write(tmp_path, T1 + b" stdout F 2\n", name="0.log.20261128-080003")
    (tmp_path / "0.log.20261128-080004.tmp").write_bytes(b"half-compressed")
    assert read_all_rotations(current) == b"1\n2\n3\n"
