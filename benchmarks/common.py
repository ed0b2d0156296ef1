"""Helpers shared by the benchmark programs: medians, ratio tables, quiet TensorFlow."""

from __future__ import annotations

import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def median(values) -> float:
    return float(statistics.median(values))


def table(rows: list[tuple], header: tuple) -> str:
    rows = [tuple(str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
