"""Report 1, Fig 11: train several times, collect the weights every few epochs, and reduce the
trajectories to 2-D with PCA (fitted on all runs' points together): the whole model and one
layer, each run its own colour, points labelled with test accuracy. Beside it, the null the
report lacked: random walks with the same start and the same step lengths, reduced the same way
(Antognini & Sohl-Dickstein 2018: PCA of a random walk also looks structured), and the explained
variance of both.

    python -m analysis.trajectories
    python -m analysis.trajectories --model mlp_128_64 --layer hidden2 --epochs 12 --every 2
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from analysis import cli, hvp, measures, study_files, training_runs
from training import cli_types

NAME = "trajectories"


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="mlp_128")
    g = p.add_argument_group("study")
    g.add_argument("--runs", type=cli_types.positive_int, default=8, help="(default: %(default)s)")
    g.add_argument("--epochs", type=cli_types.positive_int, default=24,
                   help="(default: %(default)s)")
    g.add_argument("--every", type=cli_types.positive_int, default=3,
                   help="collect the weights at epochs 0, E, 2E, ... (default: %(default)s)")
    g.add_argument("--layer", help="the layer of the second panel (default: the first layer "
                   "with a kernel)")
    g.add_argument("--train-limit", type=cli_types.positive_int, default=10000,
                   help="(default: %(default)s)")
    g.add_argument("--learning-rate", type=cli_types.positive_float, default=0.05,
                   help="plain SGD, as the report (default: %(default)s)")
    g.add_argument("--recipe", action="store_true", help="the model's own recipe instead")
    return p


def collected_epochs(epochs: int, every: int) -> list[int]:
    """0 (the initialisation), every, 2*every, ... up to `epochs`."""
    if every < 1 or epochs < every:
        raise cli_types.UsageError(
            f"--every must be between 1 and --epochs ({epochs}), got {every}")
    return list(range(0, epochs + 1, every))


def layer_variables(model, layer: str | None) -> tuple[str, list[int]]:
    """The layer's name and the indices of its variables in model.trainable_variables."""
    names = [v.path for v in model.trainable_variables]
    if layer is None:
        layer = next(lay.name for lay in model.layers if getattr(lay, "kernel", None) is not None)
    idx = [i for i, n in enumerate(names) if n.split("/")[0] == layer]
    if not idx:
        known = sorted({n.split("/")[0] for n in names})
        raise cli_types.UsageError(f"no trainable layer {layer!r}; layers: {', '.join(known)}")
    return layer, idx


def random_walk_null(trajectories: np.ndarray, seed: int) -> np.ndarray:
    """Per run, a walk from the same start whose steps have the real steps' lengths and
    uniformly random directions. trajectories: (runs, points, n)."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(trajectories)
    for r, traj in enumerate(trajectories):
        steps = np.linalg.norm(np.diff(traj, axis=0), axis=1)
        d = rng.standard_normal((len(steps), traj.shape[1]))
        d *= (steps / np.linalg.norm(d, axis=1))[:, None]
        out[r] = np.concatenate([traj[:1], traj[:1] + np.cumsum(d, axis=0)])
    return out


def main(args) -> dict:
    spec = cli.check_model(args.model)
    if args.quick:
        args.runs, args.epochs, args.every = min(args.runs, 3), 2, 1
        args.train_limit = 1024
    epochs = collected_epochs(args.epochs, args.every)
    seeds = cli.run_seeds(args, args.runs, "--runs")
    study = study_files.Study(NAME, args, collected_epochs=epochs)
    ds = training_runs.load(spec.dataset, args)
    n_test = 500 if args.quick else 2000
    x_test, y_test = ds.x_test[:n_test], ds.y_test[:n_test]
    points, metric, layer = [], [], args.layer
    for r, seed in enumerate(seeds):
        config = training_runs.train_config(args.model, args, seed=seed, epochs=args.epochs,
                                     train_limit=args.train_limit, dataset_size=len(ds.x_train))
        if not args.recipe:
            config = dataclasses.replace(config, optimizer="sgd", schedule="constant",
                                         learning_rate=args.learning_rate)
        weights, scores = [], []

        def collect(epoch, model, weights=weights, scores=scores):
            if epoch in epochs:
                weights.append(hvp.flatten(model.trainable_variables))
                scores.append(measures.evaluate(model, x_test, y_test, spec.task))
                study.count("loss_evaluations")

        model, _ = training_runs.fit(config, ds, validate=False, on_epoch=collect)
        study.count("training_steps", config.epochs * config.steps_per_epoch)
        layer, idx = layer_variables(model, layer)
        points.append(np.array(weights))
        metric.append([s.get("accuracy", s["loss"]) for s in scores])
        study.progress(r + 1, args.runs, f"seed {seed}: {_metric_name(spec)} "
                       f"{metric[-1][0]:.3f} -> {metric[-1][-1]:.3f}", phase="runs")
    points = np.array(points)  # runs x collected x n
    layer_slice = _slice(model, idx)
    null = random_walk_null(points, args.seed + 10_000)
    views = {}
    for view, sl in (("whole model", slice(None)), (f"layer {layer}", layer_slice)):
        real = measures.pca(points[:, :, sl].reshape(-1, points[:, :, sl].shape[-1]))
        walk = measures.pca(null[:, :, sl].reshape(-1, null[:, :, sl].shape[-1]))
        # Each run alone: the comparison of Antognini & Sohl-Dickstein (across runs, the
        # distances between the random initialisations dominate both).
        own = [measures.pca(t[:, sl]) for t in points]
        own_null = [measures.pca(t[:, sl]) for t in null]
        views[view] = {
            "parameters": int(points[:, :, sl].shape[-1]),
            "per_run_explained_variance": np.mean([_pad(o["explained"]) for o in own], axis=0),
            "per_run_null_explained_variance": np.mean([_pad(o["explained"]) for o in own_null],
                                                       axis=0),
            # each run in its own PCA plane (centred on its mean)
            "per_run_projected": np.array([o["projected"] for o in own]),
            "per_run_null_projected": np.array([o["projected"] for o in own_null]),
            "projected": real["projected"].reshape(args.runs, len(epochs), 2),
            "explained_variance": _pad(real["explained"]),
            "null_projected": walk["projected"].reshape(args.runs, len(epochs), 2),
            "null_explained_variance": _pad(walk["explained"]),
        }
    runs = [{"seed": seeds[r], "color": f"C{r % 10}", "metric": metric[r],
             "step_norms": np.linalg.norm(np.diff(points[r], axis=0), axis=1),
             "null_step_norms": np.linalg.norm(np.diff(null[r], axis=0), axis=1)}
            for r in range(args.runs)]
    results = {"model": args.model, "layer": layer, "metric": _metric_name(spec),
               "collected_epochs": epochs, "runs": runs, "views": views,
               "optimizer": "recipe" if args.recipe else f"sgd lr {args.learning_rate}"}
    _plots(study, args, results)
    whole = views["whole model"]
    claims = [{"report_figure": "report 1, Fig 11",
               "claim": "PCA of the weights collected during training shows each run's "
                        "trajectory as a distinct, structured path",
               "measured": f"{args.model}, {args.runs} runs: PC1+PC2 explain "
                           f"{sum(whole['explained_variance'][:2]):.0%} of all runs' points "
                           f"({sum(whole['null_explained_variance'][:2]):.0%} for random walks "
                           "with the same starts and step lengths: the gaps between random "
                           "initialisations dominate both); within one run PC1+PC2 explain "
                           f"{sum(whole['per_run_explained_variance'][:2]):.0%} of a training "
                           f"trajectory vs {sum(whole['per_run_null_explained_variance'][:2]):.0%}"
                           " of a random walk"}]
    return study.finish(results, claims)


def _pad(explained: np.ndarray, k: int = 5) -> np.ndarray:
    """Exactly k entries: the first k, padded with zeros when there are fewer."""
    explained = np.asarray(explained)[:k]
    return np.pad(explained, (0, k - len(explained)))


def _slice(model, idx: list[int]) -> slice:
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    start = sum(sizes[:idx[0]])
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise ValueError("a layer's variables are not contiguous")
    return slice(start, start + sum(sizes[i] for i in idx))


def _label_points(ax, pts, metric, color, extent) -> None:
    """Label the first and last points, and those in between far enough from the last label."""
    pts = np.asarray(pts)
    scale = np.where(np.asarray(extent) > 0, extent, 1.0)
    last = None
    for i, ((x, y), m) in enumerate(zip(pts, metric)):
        far = last is None or np.max(np.abs((pts[i] - last) / scale)) > 0.04
        if i in (0, len(pts) - 1) or far:
            ax.annotate(f"{m:.2f}", (x, y), fontsize=6, color=color, xytext=(2, 2),
                        textcoords="offset points")
            last = pts[i]


def _metric_name(spec) -> str:
    return "test accuracy" if spec.task == "classification" else "test loss"


def _pca_grid(r, real: tuple[str, str], null: tuple[str, str], per_run: bool):
    """Columns: the views (whole model, one layer); rows: training, then its random-walk null.
    `real`/`null`: the keys of the projected points and of their explained variance."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    for col, (view, v) in enumerate(r["views"].items()):
        for row, ((key, ev_key), title) in enumerate(((real, "training"),
                                                      (null, "random-walk null"))):
            ax, ev = axes[row, col], v[ev_key]
            for run, pts in zip(r["runs"], v[key]):
                pts = np.asarray(pts)
                ax.plot(pts[:, 0], pts[:, 1], "-o", color=run["color"], ms=3, lw=1,
                        label=f"seed {run['seed']}")
                if per_run:
                    ax.plot(pts[0, 0], pts[0, 1], "s", color=run["color"], ms=6)
                    ax.plot(pts[-1, 0], pts[-1, 1], "*", color=run["color"], mec="k", ms=10)
                elif row == 0:
                    _label_points(ax, pts, run["metric"], run["color"], np.ptp(
                        np.reshape(v[key], (-1, 2)), axis=0))
            if per_run:
                ax.set_xlabel(f"own PC1 (mean {ev[0]:.0%} of a run's variance)")
                ax.set_ylabel(f"own PC2 (mean {ev[1]:.0%})")
                ax.set_title(f"{view}: {title}, each run in its own PCA plane")
            else:
                ax.set_xlabel(f"PC1 ({ev[0]:.0%} of variance)")
                ax.set_ylabel(f"PC2 ({ev[1]:.0%} of variance)")
                ax.set_title(f"{view} ({v['parameters']:,} weights): {title}")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    return fig


def _plots(study, args, r):
    import matplotlib.pyplot as plt

    views = r["views"]
    fig = _pca_grid(r, ("projected", "explained_variance"),
                    ("null_projected", "null_explained_variance"), per_run=False)
    fig.suptitle(f"{args.model}: weights at epochs {r['collected_epochs']}, "
                 f"{r['optimizer']}; labels: {r['metric']}")
    study.savefig(fig, "trajectories_pca.png", "Report 1 Fig 11: weight trajectories of "
                  f"{len(r['runs'])} runs in the plane of their first two principal components "
                  "(whole model, one layer), labelled with test accuracy; below, random walks "
                  "with the same starts and step lengths, PCA'd the same way")

    fig = _pca_grid(r, ("per_run_projected", "per_run_explained_variance"),
                    ("per_run_null_projected", "per_run_null_explained_variance"), per_run=True)
    fig.suptitle(f"{args.model}: each run (square = init, star = its last point) projected on "
                 "its own first two principal components")
    study.savefig(fig, "trajectories_per_run.png", "Each run alone, in the plane of its own "
                  "first two principal components; below, each "
                  "random walk with the same step lengths: a random walk's PCA also looks like "
                  "a smooth curve (Antognini & Sohl-Dickstein 2018), with a little less of its "
                  "variance in two components")

    fig, ax = plt.subplots(figsize=(7, 4))
    k = np.arange(1, 6)
    for i, (view, v) in enumerate(views.items()):
        ax.plot(k, np.cumsum(v["explained_variance"]), "-o", color=f"C{i}", label=f"{view}")
        ax.plot(k, np.cumsum(v["null_explained_variance"]), "--s", color=f"C{i}",
                label=f"{view}: random-walk null")
        ax.plot(k, np.cumsum(v["per_run_explained_variance"]), "-^", color=f"C{i + 2}",
                label=f"{view}: each run alone (mean)")
        ax.plot(k, np.cumsum(v["per_run_null_explained_variance"]), ":v", color=f"C{i + 2}",
                label=f"{view}: each random walk alone (mean)")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    study.savefig(fig, "explained_variance.png", "Cumulative explained variance of the first "
                  "five principal components: training trajectories against random walks of the "
                  "same step lengths, all runs together and each run alone")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
