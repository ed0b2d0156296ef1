"""Report 1, Figs 7-10: the three ~100k-weight MNIST MLPs (784-128-10, 784-107-64-64-64-16-10,
784-128-64-10): training and test loss and accuracy per epoch on shared axes, bands over seeds,
and the wall time per model that the report mentions but never measured.

    python -m analysis.mnist_curves
    python -m analysis.mnist_curves --models mlp_128 deep_cnn --seeds 1 --epochs 3
"""

from __future__ import annotations

import sys

import numpy as np

import zoo
from analysis import cli, study_files, training_runs
from training import cli_types

NAME = "mnist_curves"
DEFAULT_MODELS = ("mlp_128", "mlp_107_64_64_64_16", "mlp_128_64")


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0])
    g = p.add_argument_group("study")
    g.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    g.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    g.add_argument("--seeds", type=cli_types.positive_int, default=2,
                   help="runs per model (default: %(default)s)")
    g.add_argument("--epochs", type=cli_types.positive_int, default=6,
                   help="(default: %(default)s)")
    g.add_argument("--train-limit", type=cli_types.positive_int,
                   help="train on the first N images only")
    return p


def main(args) -> dict:
    for m in args.models:
        cli.check_model(m, task="classification", dataset=args.dataset)
    overrides = {"epochs": args.epochs, "train_limit": args.train_limit}
    if args.quick:
        args.seeds = min(args.seeds, 2)
        overrides = {"epochs": 2, "steps_per_epoch": 8, "train_limit": 2000, "test_limit": 500}
    seeds = cli.run_seeds(args, args.seeds)
    study = study_files.Study(NAME, args)
    ds = training_runs.load(args.dataset, args)
    per_model = {}
    total, done = len(args.models) * args.seeds, 0
    for name in args.models:
        runs = []
        for seed in seeds:
            config = training_runs.train_config(name, args, seed=seed, dataset=args.dataset,
                                         **overrides)
            _, records = training_runs.fit(config, ds, study=study, label=f"{name} s{seed}")
            runs.append(records)
            done += 1
            study.progress(done, total, f"{name}: test accuracy "
                           f"{records[-1]['test_accuracy']:.4f}", phase="runs")
        per_model[name] = {
            "parameters": zoo.parameter_count(name),
            "curves": {k: np.array([[r[k] for r in run] for run in runs]).tolist()
                       for k in ("train_loss", "test_loss", "train_accuracy", "test_accuracy",
                                 "seconds")},
            "wall_seconds_per_run": [sum(r["seconds"] for r in run) for run in runs],
            "final_test_accuracy": [run[-1]["test_accuracy"] for run in runs],
        }
    _plots(study, per_model)
    summary = "; ".join(
        f"{n} ({v['parameters']:,} weights): test acc {np.mean(v['final_test_accuracy']):.4f}, "
        f"{np.mean(v['wall_seconds_per_run']):.1f} s/run" for n, v in per_model.items())
    claims = [{"report_figure": "report 1, Figs 7-10",
               "claim": "three ~100k-weight MLPs of different depth reach similar MNIST accuracy; "
                        "training time mentioned, not measured",
               "measured": summary}]
    return study.finish({"models": per_model}, claims)


def _plots(study, per_model):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, r) in enumerate(per_model.items()):
        color = f"C{i}"
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split, ls in (("train", "-"), ("test", "--")):
                runs = np.array(r["curves"][f"{split}_{metric}"])
                ep = np.arange(1, runs.shape[1] + 1)
                mean = runs.mean(0)
                ax.plot(ep, mean, ls, color=color, label=f"{name} {split}")
                ax.fill_between(ep, runs.min(0), runs.max(0), color=color, alpha=0.15, lw=0)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle("MNIST MLPs: train (solid) and test (dashed), mean and min-max over seeds")
    study.savefig(fig, "curves.png", "Report 1 Figs 7-10: loss and accuracy per epoch, train "
                  "(running mean over the epoch, in the training precision) solid, test (float32) "
                  "dashed, band over seeds")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(per_model)
    walls = [per_model[n]["wall_seconds_per_run"] for n in names]
    ax.bar(range(len(names)), [np.mean(w) for w in walls],
           yerr=[np.std(w) for w in walls], color=[f"C{i}" for i in range(len(names))])
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("training wall time per run (s)")
    study.savefig(fig, "wall_time.png", "Wall time per training run (mean +- std over seeds), "
                  "measured on this machine")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
