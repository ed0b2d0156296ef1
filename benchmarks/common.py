"""Helpers shared by the benchmark programs: the machine's name, medians, ratio tables, quiet
TensorFlow."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> str:
    """The line every benchmark prints first: figures mean little without the CPU they ran on
    (a bf16-capable CPU trains mixed_bfloat16 ~2x faster; a CPU without emulates it ~6x
    slower)."""
    from training.precision import NATIVE_BF16_CPU_FLAGS

    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    bf16 = ", ".join(sorted(flags & NATIVE_BF16_CPU_FLAGS)) or "none"
    return f"machine: {name}, {os.cpu_count()} cores; native bf16 CPU flags: {bf16}"


def median(values) -> float:
    return float(statistics.median(values))


def table(rows: list[tuple], header: tuple) -> str:
    rows = [tuple(str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
