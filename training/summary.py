"""A trained run's result: summary.json (test metrics, the reference met or not), its plots,
and the export; the same for a single-process and a multi-worker run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import zoo
from training import data, modeling
from training.config import TrainConfig, write_json_atomic


def finish(model, config: TrainConfig, dataset: data.Dataset, run_dir: Path,
           history: list[dict], export_dir: Path | None, resumed: list[int]) -> dict:
    """`resumed`: the epochs the run was resumed at (state.json's), recorded in the summary
    and the certificate."""
    from training.plots import plot_curves

    try:  # a run exported before and resumed with --no-export keeps its export
        exported = json.loads((run_dir / "summary.json").read_text()).get("export")
    except (OSError, ValueError, AttributeError):
        exported = None

    spec = zoo.get_spec(config.model)
    last = history[-1]
    metric = spec.reference.metric
    value = last["test_accuracy"] if metric == "accuracy" else last["test_loss"]
    summary = {
        "model": config.model,
        "run_dir": str(run_dir),
        "config": config.to_json(),
        "parameters": int(model.count_params()),
        # model.keras as exported: a copy of this run folder is known by it (run_folder,
        # published_export), and is not exported again.
        "model_sha256": data.sha256_file(run_dir / "model.keras"),
        "data": {"source": dataset.source, "sha256": dataset.sha256},
        "epochs_completed": last["epoch"],
        "resumed_at_epochs": list(resumed),
        "train_seconds": sum(r["train_seconds"] for r in history),
        "test": {k[5:]: v for k, v in last.items() if k.startswith("test_")},
        "reference": {
            "metric": metric,
            "target": spec.reference.target,
            "value": value,
            # Met or not only on the whole test set of the spec's own dataset.
            **dict(zip(("met", "not_measured"), modeling.reference_verdict(
                spec, config, dataset, value), strict=True)),
            "provenance": spec.reference.provenance,
        },
        "plots": [p.name for p in plot_curves(history, run_dir, config.model)],
        "export": exported,
    }
    # Written before the export too: a refused or killed export must not lose the run's result.
    write_json_atomic(run_dir / "summary.json", summary)
    if export_dir is not None:
        from training.export import export_model, export_name

        if limited := limits(config):
            print(f"[export] note: this run is limited ({limited}), yet it becomes the newest "
                  f"version under {Path(export_dir) / export_name(config)}, which a server of that "
                  "folder serves next; --no-export or another --export-dir keeps it apart",
                  file=sys.stderr)
        version_dir = export_model(model, config, dataset, summary, export_dir)
        summary["export"] = str(version_dir)
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def limits(config: TrainConfig) -> str:
    """The small-run flags a run was made with ("" for none): --steps, --train-limit,
    --test-limit."""
    given = [(f"--steps {config.steps}", config.steps),
             (f"--train-limit {config.train_limit}", config.train_limit),
             (f"--test-limit {config.test_limit}", config.test_limit)]
    return ", ".join(flag for flag, value in given if value is not None)
