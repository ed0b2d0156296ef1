"""Fit MNIST with shuffled labels (Zhang et al. 2017, "Understanding deep learning requires
rethinking generalization"): training and test loss and accuracy per epoch for several fractions of
shuffled training labels, a band over seeds. Test labels stay true, so what the network learns from
noise shows up as a growing gap between train and test.

    python -m analysis.random_labels
    python -m analysis.random_labels --model mlp_128_64 --fractions 0 0.2 1 --train-limit 10000
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

import zoo
from analysis import cli, measures, study_files, training_runs
from training import cli_types

NAME = "random_labels"


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="mlp_128",
                            model_help="an MNIST classifier of the zoo")
    g = p.add_argument_group("study")
    g.add_argument("--fractions", type=cli_types.fraction, nargs="+", default=[0.0, 0.5, 1.0],
                   help="fractions of training labels shuffled, one curve each "
                   "(default: %(default)s)")
    g.add_argument("--train-limit", type=cli_types.positive_int, default=4000,
                   help="memorise the first N training images (default: %(default)s)")
    g.add_argument("--epochs", type=cli_types.positive_int, default=100,
                   help="(default: %(default)s)")
    g.add_argument("--batch-size", type=cli_types.positive_int, default=128,
                   help="(default: %(default)s)")
    g.add_argument("--seeds", type=cli_types.positive_int, default=2,
                   help="runs per fraction (default: %(default)s)")
    return p


def shuffle_labels(y: np.ndarray, n: int, fraction: float, seed: int) -> np.ndarray:
    """A copy of y whose first n labels have `fraction` of their positions permuted among
    themselves: the label histogram is unchanged, the image-label link is broken for those."""
    if not 0.0 <= fraction <= 1.0:
        raise cli_types.UsageError(f"--fractions must lie in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    y = y.copy()
    chosen = rng.choice(n, size=round(fraction * n), replace=False)
    y[chosen] = y[rng.permutation(chosen)]
    return y


def main(args) -> dict:
    spec = cli.check_model(args.model, task="classification", dataset="mnist")
    if args.quick:
        args.train_limit, args.epochs, args.seeds = 512, 3, min(args.seeds, 2)
        args.fractions = args.fractions[:1] + args.fractions[-1:] if len(args.fractions) > 1 \
            else args.fractions
    seeds = cli.run_seeds(args, args.seeds)
    study = study_files.Study(NAME, args)
    ds = training_runs.load(spec.dataset, args)
    n = min(args.train_limit, len(ds.x_train))
    test_limit = 500 if args.quick else None
    per_fraction, total, done = {}, len(args.fractions) * args.seeds, 0
    for fraction in args.fractions:
        runs = []
        for seed in seeds:
            noisy = dataclasses.replace(ds, y_train=shuffle_labels(ds.y_train, n, fraction, seed))
            config = training_runs.train_config(args.model, args, seed=seed, epochs=args.epochs,
                                         batch_size=args.batch_size, train_limit=n,
                                         test_limit=test_limit)
            label = f"shuffled {fraction:.0%} s{seed}"
            model, records = training_runs.fit(config, noisy, study=study, label=label)
            # Keras' train loss is a running mean over the epoch, with dropout on: measure the
            # final fit on the (noisy) training set itself, in inference mode.
            final = measures.evaluate(model, noisy.x_train[:n], noisy.y_train[:n], spec.task)
            study.count("loss_evaluations", 1)
            changed = float(np.mean(noisy.y_train[:n] != ds.y_train[:n]))
            runs.append({"seed": seed, "records": records, "final_train": final,
                         "labels_changed": changed})
            done += 1
            study.progress(done, total, f"{label}: train acc {final['accuracy']:.3f}, test acc "
                           f"{records[-1]['test_accuracy']:.3f}", phase="runs")
        per_fraction[f"{fraction:g}"] = _summarise(fraction, runs)
    _plots(study, args, per_fraction)
    claims = [{"report_figure": "beyond report 1 (course question; Zhang et al. 2017, Fig 1)",
               "claim": "a network can fit random labels: training loss still goes to ~0 while "
                        "test accuracy falls to chance",
               "measured": "; ".join(
                   f"{k} shuffled: train acc {v['final_train_accuracy_mean']:.3f}, test acc "
                   f"{v['final_test_accuracy_mean']:.3f}" for k, v in per_fraction.items())
               + f" ({args.model}, {n:,} images, {args.epochs} epochs, {args.seeds} seeds)"}]
    return study.finish({"model": args.model, "parameters": zoo.parameter_count(args.model),
                         "train_images": n, "fractions": per_fraction}, claims)


def _summarise(fraction: float, runs: list[dict]) -> dict:
    curves = {k: np.array([[r[k] for r in run["records"]] for run in runs])
              for k in ("train_loss", "test_loss", "train_accuracy", "test_accuracy")}
    return {
        "fraction": fraction,
        "labels_changed": [r["labels_changed"] for r in runs],
        "curves": curves,
        "final_train": [r["final_train"] for r in runs],
        "final_train_accuracy_mean": float(np.mean([r["final_train"]["accuracy"] for r in runs])),
        "final_test_accuracy_mean": float(curves["test_accuracy"][:, -1].mean()),
        "epoch_seconds_mean": float(np.mean([[r["seconds"] for r in run["records"]]
                                             for run in runs])),
    }


def _plots(study, args, per_fraction):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (key, r) in enumerate(per_fraction.items()):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split, ls in (("train", "-"), ("test", "--")):
                runs = r["curves"][f"{split}_{metric}"]
                ep = np.arange(1, runs.shape[1] + 1)
                ax.plot(ep, runs.mean(0), ls, color=f"C{i}", label=f"{key} shuffled, {split}")
                ax.fill_between(ep, runs.min(0), runs.max(0), color=f"C{i}", alpha=0.15, lw=0)
    axes[0].set_yscale("log")
    axes[1].axhline(0.1, color="grey", lw=0.8, ls=":", label="chance")
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{args.model} on {study.config['train_limit']:,} MNIST images with shuffled "
                 "labels: train (solid), true-label test (dashed)")
    study.savefig(fig, "random_labels.png", "Shuffled training labels: train loss (running mean "
                  "over each epoch, in the training precision) still falls while test loss "
                  "(float32) rises; mean and min-max over seeds per fraction shuffled")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
