"""Numbers and tables: percentiles of samples, figures with a cri-shim/containerd ratio, plain-text tables.

Pure logic (unit-tested in tests/unit/test_bench_compare.py); nothing here touches the machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SHIM = "cri-shim"
CONTAINERD = "containerd"
RUNTIMES = (SHIM, CONTAINERD)


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p% of the samples at or below it (p99 of
    fewer than 100 samples is the maximum). No interpolation, so every reported value was really observed."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} outside (0, 100]")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Dist:
    """Latency samples in seconds."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Iterable[float]) -> Dist:
        return cls(tuple(samples))

    def ms(self, p: float) -> float:
        return percentile(self.samples, p) * 1000

    def summary(self) -> dict[str, float]:
        """n, p50/p90/p99, mean, min and max in milliseconds (the JSON form)."""
        if not self.samples:
            return {"n": 0}
        return {"n": len(self.samples), "p50_ms": self.ms(50), "p90_ms": self.ms(90), "p99_ms": self.ms(99),
                "mean_ms": statistics.fmean(self.samples) * 1000, "min_ms": min(self.samples) * 1000,
                "max_ms": max(self.samples) * 1000}


@dataclass(frozen=True)
class Figure:
    """One row of a table: a named quantity measured on each runtime (None where it was not measured)."""

    name: str
    unit: str
    values: dict[str, float | None]

    @property
    def ratio(self) -> float | None:
        """cri-shim / containerd; None when either is missing or containerd's value is zero."""
        ours, theirs = self.values.get(SHIM), self.values.get(CONTAINERD)
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, **{r: self.values.get(r) for r in RUNTIMES},
                "ratio": self.ratio}


def latency_figures(label: str, dists: dict[str, Dist], quantiles: Sequence[int] = (50, 90, 99)) -> list[Figure]:
    """`label p50`, `label p90`, ... in ms, from each runtime's samples (missing or empty → None)."""
    out = []
    for q in quantiles:
        values: dict[str, float | None] = {}
        for runtime in RUNTIMES:
            d = dists.get(runtime)
            values[runtime] = d.ms(q) if d is not None and d.samples else None
        out.append(Figure(f"{label} p{q}", "ms", values))
    return out


@dataclass
class WorkloadResult:
    """What one workload produced: its table, a status per runtime, notes and the raw numbers."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)     # runtime -> "ok" | "could not run: …" | "failed: …"
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        return any(s.startswith("failed") for s in self.status.values())

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "status": self.status, "elapsed_s": self.elapsed_s,
                "notes": self.notes,
                "figures": [f.as_json() for f in self.figures], "raw": self.raw}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "count" or (value == int(value) and abs(value) >= 1000):
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(result: WorkloadResult) -> str:
    """The workload as fixed-width text: a title, one row per figure (cri-shim, containerd, ratio), the status of
    each runtime that did not simply succeed, and the notes."""
    head = ("figure", SHIM, CONTAINERD, "ratio")
    rows = [(f"{f.name} [{f.unit}]", fmt(f.values.get(SHIM), f.unit), fmt(f.values.get(CONTAINERD), f.unit),
             "-" if f.ratio is None else f"{f.ratio:.2f}x") for f in result.figures]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = [f"== {result.title}"]
    if rows:
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for runtime in RUNTIMES:
        status = result.status.get(runtime, "not run")
        if status != "ok":
            lines.append(f"  {runtime}: {status}")
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)
