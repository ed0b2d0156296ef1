"""Loss and accuracy curves of a run, from its per-epoch metrics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], run_dir: Path, title: str) -> list[Path]:
    """One PNG per metric present (loss, and accuracy for classifiers), train and test."""
    written = []
    epochs = [r["epoch"] for r in history]
    for metric in ("loss", "accuracy"):
        if f"train_{metric}" not in history[0]:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for split, style in (("train", "-o"), ("test", "-s")):
            key = f"{split}_{metric}"
            if key in history[0]:
                ax.plot(epochs, [r[key] for r in history], style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{title}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = Path(run_dir) / f"{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
