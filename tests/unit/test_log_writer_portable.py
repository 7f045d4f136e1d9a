"""runtime/logs.py is shared by the Linux pod shim and the Windows backend: it must work where os has no O_CLOEXEC."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import runtime.logs


def test_the_cri_log_writer_works_on_a_platform_without_o_cloexec(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_CLOEXEC")
    try:
        logs = importlib.reload(runtime.logs)
        assert logs.O_CLOEXEC == 0
        writer = logs.CriLogWriter(str(tmp_path / "c.log"), clock=lambda: 1_700_000_000_000_000_000)
        writer.open()
        writer.feed("stdout", b"hello\r\nwor")
        writer.end("stdout")
        writer.close_file()
    finally:
        monkeypatch.undo()
        importlib.reload(runtime.logs)
    assert (tmp_path / "c.log").read_text().splitlines() == ["2023-11-14T22:13:20Z stdout F hello",
                                                             "2023-11-14T22:13:20Z stdout P wor"]


def test_the_linux_runtime_still_exports_the_shared_writer() -> None:
    from runtime.linux import logs as linux_logs
    assert linux_logs.CriLogWriter.__module__ == "runtime.logs"
