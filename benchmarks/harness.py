"""The benchmark harness: every figure is printed beside its baseline from the same run.

Each benchmark script measures its subject and its baseline in one process, then calls
:func:`report` for every figure. Output is a human-readable table on stdout and, with
``--json PATH`` handled by the caller, the same rows as JSON.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Report", "time_calls", "percentile"]


@dataclass
class Figure:
    """One measured figure and its baseline from the same run."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    goal: str | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """How many times better than the baseline (>1 is better)."""
        if self.baseline in (None, 0) or self.value == 0:
            return None
        assert self.baseline is not None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


@dataclass
class Report:
    """A benchmark's figures, printed as a table."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        """Record and return ``figure``."""
        self.figures.append(figure)
        return figure

    def print(self) -> None:
        """Print the figures as a table on stdout."""
        print(f"\n== {self.title} ==  ({platform.node()}, python {platform.python_version()})")
        for f in self.figures:
            base = ""
            if f.baseline is not None:
                ratio = f.ratio
                ratio_text = f"{ratio:.2f}x" if ratio is not None else "n/a"
                label = f.baseline_name or ""
                base = f" | baseline {label}: {f.baseline:.6g} {f.unit} | ratio {ratio_text}"
            goal = f" | goal {f.goal}" if f.goal else ""
            print(f"  {f.name}: {f.value:.6g} {f.unit}{base}{goal}")
        for note in self.notes:
            print(f"  note: {note}")

    def write_json(self, path: Path) -> None:
        """Write the figures as JSON to ``path``."""
        rows: list[dict[str, Any]] = [{**asdict(f), "ratio": f.ratio} for f in self.figures]
        path.write_text(
            json.dumps({"title": self.title, "figures": rows, "notes": self.notes}, indent=2)
        )


def time_calls(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn``."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=1000, method="inclusive")[
        max(0, min(998, int(q * 10) - 1))
    ]
