"""Readers for the two small config formats in deploy/: systemd unit files and flat YAML documents.

Stdlib only (no PyYAML in the test venv): the deploy files keep their top-level keys flat on purpose, so a
line reader is enough, and a nested or multi-document file is rejected rather than misread.
"""

from __future__ import annotations

from pathlib import Path


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (systemd allows repeated keys, e.g. ExecStartPre)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path}:{number}: not a section header or key=value: {raw!r}")
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_simple_yaml(text: str) -> dict[str, str]:
    """Top-level `key: value` pairs of a one-document YAML file; values are returned as written."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith((" ", "-")) or line == "---":
            raise ValueError(f"line {number}: nested or multi-document YAML is not supported here: {raw!r}")
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"line {number}: expected `key: value`: {raw!r}")
        out[key.strip()] = value.strip().strip('"')
    return out
