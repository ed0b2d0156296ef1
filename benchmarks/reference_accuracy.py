"""Does every model reach its reference result with its default recipe, and how fast?

    python -m benchmarks.reference_accuracy [--models softmax_regression deep_cnn ...] [--seeds 0]

Trains each model with exactly what `python -m training.train NAME` would use (precision auto),
without exporting, and prints the test metric against the spec's target and the report's own
number, with the training time (evaluation excluded).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import machine, median, table
from serving import quiet

DEFAULT = ["softmax_regression", "mlp_128", "mlp_128_64", "mlp_107_64_64_64_16", "deep_cnn"]


def run(name: str, seed: int, ds) -> dict:
    from training import precision
    from training.config import resolve_config
    from training.train import train

    resolved = precision.choose("auto")
    config = resolve_config(name, precision_requested="auto", precision=resolved.policy,
                            precision_reason=resolved.reason, train_size=len(ds.x_train),
                            seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        return train(config, Path(tmp) / "run", ds, export_dir=None)


def main() -> None:
    import zoo
    from training import data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("--models", nargs="+", default=DEFAULT)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = p.parse_args()
    print(machine(), flush=True)
    rows = []
    for name in args.models:
        spec = zoo.get_spec(name)
        ds = data.load_dataset(spec.dataset)
        summaries = [run(name, seed, ds) for seed in args.seeds]
        values = [s["reference"]["value"] for s in summaries]
        seconds = [s["train_seconds"] for s in summaries]
        ref = spec.reference
        rows.append((
            name, summaries[0]["config"]["precision"], f"{summaries[0]['epochs_completed']}",
            f"{median(values):.4f}", f"{min(values):.4f}-{max(values):.4f}",
            f"{'>=' if ref.metric == 'accuracy' else '<='} {ref.target:g}",
            "-" if ref.report_value is None else f"{ref.report_value:g}",
            "yes" if all(ref.met_by(v) for v in values) else "NO",
            f"{median(seconds):.1f}",
        ))
        print(rows[-1], flush=True)
    print(f"\nDefault recipes, seeds {args.seeds} (medians; range over seeds)")
    print(table(rows, ("model", "precision", "epochs", "test metric", "range", "target",
                       "report", "met", "train s")))


if __name__ == "__main__":
    main()
