"""What the studies' figures share: a mean line over runs with its spread."""

from __future__ import annotations

import numpy as np


def band(ax, x, runs: np.ndarray, label: str, color=None, log: bool = False):
    """Mean line and min-max band (plus +-1 std, darker) of runs (n_runs, n_points)."""
    runs = np.asarray(runs, dtype=float)
    mean = np.exp(np.log(runs).mean(0)) if log else runs.mean(0)
    (line,) = ax.plot(x, mean, label=f"{label} (n={len(runs)})", color=color)
    c = line.get_color()
    ax.fill_between(x, runs.min(0), runs.max(0), color=c, alpha=0.15, linewidth=0)
    if not log and len(runs) > 1:
        sd = runs.std(0)
        ax.fill_between(x, mean - sd, mean + sd, color=c, alpha=0.2, linewidth=0)
    return {"label": label, "mean": mean, "min": runs.min(0), "max": runs.max(0),
            "std": runs.std(0)}
