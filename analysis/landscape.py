"""The loss landscape around a trained model (Li et al., 2018): loss along filter-normalised random
directions in 1-D and 2-D (contours and a surface), the training trajectory projected onto its own
PCA plane drawn over the loss contours of that plane, and the straight path from the
initialisation to the solution (Goodfellow et al., 2015). The loss is evaluated on a fixed subset
of the training set, always in float32 or float64, whatever precision trained the model.

    python -m analysis.landscape
    python -m analysis.landscape --model deep_cnn --epochs 2 --grid 11
"""

from __future__ import annotations

import sys

import numpy as np

from analysis import cli, hvp, measures, study_files, training_runs
from training import cli_types, modeling

NAME = "landscape"


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="mlp_128")
    g = p.add_argument_group("study")
    g.add_argument("--epochs", type=cli_types.positive_int, default=10,
                   help="training epochs (default: %(default)s)")
    g.add_argument("--train-limit", type=cli_types.positive_int, default=10000,
                   help="(default: %(default)s)")
    g.add_argument("--eval-images", type=cli_types.positive_int, default=2000,
                   help="the loss is the mean over the first N training examples "
                   "(default: %(default)s)")
    g.add_argument("--grid", type=cli_types.integer(3), default=21, help="2-D grid points per axis "
                   "(default: %(default)s)")
    g.add_argument("--points", type=cli_types.integer(3), default=41,
                   help="1-D points (default: %(default)s)")
    g.add_argument("--span", type=cli_types.positive_float, default=1.0,
                   help="directions are scaled over [-span, span] (default: %(default)s)")
    g.add_argument("--directions", type=cli_types.positive_int, default=3,
                   help="1-D slices along this many independent filter-normalised directions, "
                   "the first two being the 2-D plane's axes (default: %(default)s)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    return p


def linear_path_alphas(points: int) -> np.ndarray:
    """`points` steps from 0 to 1 (both exactly on the grid) and about a quarter beyond each
    end, at the same spacing."""
    step = 1.0 / (points - 1)
    k = max(1, round(0.25 / step))
    return np.arange(-k, points + k) / (points - 1)  # exactly 0.0 and 1.0


def filter_normalised(direction: list[np.ndarray], weights: list[np.ndarray]) -> list[np.ndarray]:
    """Li et al.'s filter normalisation: every filter (an output unit of a kernel: the last axis
    of a Dense or convolution kernel) of the direction gets the norm of the same filter of the
    weights; vectors (biases, normalisation parameters) get a zero direction, as in the paper."""
    out = []
    for d, w in zip(direction, weights):
        if w.ndim <= 1:
            out.append(np.zeros_like(w))
            continue
        scale = _filter_norms(w) / (_filter_norms(d) + 1e-12)
        out.append(d * scale)
    return out


def _filter_norms(a: np.ndarray) -> np.ndarray:
    """Norm of every filter: over all axes but the last (np.linalg.norm takes at most two)."""
    return np.sqrt(np.sum(np.square(a), axis=tuple(range(a.ndim - 1))))


class Surface:
    """Loss (and accuracy) of one model at any flat weight vector, on fixed data."""

    def __init__(self, model, x, y, task: str, dtype: str, study=None):
        self.model = modeling.cast_model(model, dtype)  # always a copy: its weights are moved
        self.x, self.y, self.task, self.study = x, y, task, study

    def __call__(self, flat: np.ndarray) -> dict:
        hvp.assign_flat(self.model.trainable_variables, flat)
        if self.study:
            self.study.count("loss_evaluations")
        return measures.evaluate(self.model, self.x, self.y, self.task)

    def along(self, origin, directions, coords, label: str = "") -> dict:
        """Evaluate at origin + sum_i c_i d_i for every row c of coords."""
        out = []
        for i, c in enumerate(coords):
            out.append(self(origin + sum(ci * d for ci, d in zip(c, directions))))
            if self.study and (i + 1) % max(1, len(coords) // 4) == 0:
                self.study.progress(i + 1, len(coords), "points", phase=label)
        return {k: np.array([o[k] for o in out]) for k in out[0]}


def main(args) -> dict:
    spec = cli.check_model(args.model)
    if args.quick:
        args.epochs, args.train_limit, args.eval_images = 2, 1024, 256
        args.grid, args.points, args.directions = 5, 7, min(args.directions, 2)
    if args.grid < 3 or args.points < 3 or args.grid % 2 == 0 or args.points % 2 == 0:
        raise cli_types.UsageError("--grid and --points must be odd and at least 3, so that the "
                                f"grids pass through the solution (got {args.grid}, "
                                f"{args.points})")
    study = study_files.Study(NAME, args, measurement=args.dtype)
    ds = training_runs.load(spec.dataset, args)
    config = training_runs.train_config(args.model, args, epochs=args.epochs,
                                 train_limit=args.train_limit, dataset_size=len(ds.x_train))
    path = []
    model, _ = training_runs.fit(config, ds, study=study, label=args.model, validate=False,
                          on_epoch=lambda e, m: path.append(hvp.flatten(m.trainable_variables)))
    x, y = ds.x_train[:args.eval_images], ds.y_train[:args.eval_images]
    surface = Surface(model, x, y, spec.task, args.dtype, study)
    theta = hvp.flatten(model.trainable_variables)
    trained = surface(theta)
    # Informational only: the same weights run by the model as it trained (its policy). Under a
    # mixed policy it differs from `trained`, the measurement; nothing compares the two as equal.
    as_trained = measures.evaluate(model, x, y, spec.task, as_trained=True)
    study.count("loss_evaluations")
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    rng = np.random.default_rng(args.seed)
    weights = hvp.split_flat(theta, shapes)
    dirs = [hvp.flatten(filter_normalised([rng.standard_normal(s) for s in shapes], weights))
            for _ in range(max(2, args.directions))]
    d1, d2 = dirs[:2]

    alphas = np.linspace(-args.span, args.span, args.points)
    lines = [surface.along(theta, [d], alphas[:, None], f"1-D direction {i + 1}")
             for i, d in enumerate(dirs[:args.directions])]
    line = lines[0]
    ticks = np.linspace(-args.span, args.span, args.grid)
    grid = np.array([(a, b) for b in ticks for a in ticks])
    plane = surface.along(theta, [d1, d2], grid, "2-D")

    # The trajectory in its own PCA plane, centred on the solution (Li et al., section 7).
    traj = np.array(path)
    pca = measures.pca(traj, center=theta)
    u1, u2 = pca["components"]
    proj = pca["projected"]
    lo, hi = proj.min(0), proj.max(0)
    pad = 0.2 * (hi - lo) + 1e-8
    ta, tb = (np.linspace(lo[i] - pad[i], hi[i] + pad[i], args.grid) for i in range(2))
    traj_grid = np.array([(a, b) for b in tb for a in ta])
    traj_plane = surface.along(theta, [u1, u2], traj_grid, "trajectory plane")

    ab = linear_path_alphas(args.points)
    linear = surface.along(path[0], [theta - path[0]], ab[:, None], "init -> solution")
    init = surface(path[0])

    results = {
        "model": args.model, "task": spec.task, "dtype": args.dtype,
        "evaluated_on": f"first {len(x)} training examples",
        "trained": trained, "init": init,
        "informational_as_trained": {
            "precision": config.precision, **as_trained,
            "note": f"the model run as it trained ({config.precision}), not measured in "
                    f"{args.dtype}: informational, not comparable with the measurements"},
        "one_d": {"alpha": alphas, **line,
                  **{f"{k}_per_direction": np.array([ln[k] for ln in lines]) for k in line}},
        "two_d": {"alpha": ticks, "beta": ticks,
                  "loss": plane["loss"].reshape(args.grid, args.grid)},
        "trajectory": {"epochs": list(range(len(path))), "coords": proj,
                       "explained_variance": pca["explained"][:2], "a": ta, "b": tb,
                       "loss": traj_plane["loss"].reshape(args.grid, args.grid)},
        "linear_path": {"a": ab, **linear},
        "direction_norms": [float(np.linalg.norm(d1)), float(np.linalg.norm(d2))],
        "weight_norm": float(np.linalg.norm(theta)),
    }
    _plots(study, args, results)
    lp = results["linear_path"]["loss"]
    mid = lp[(ab >= 0) & (ab <= 1)]
    ends = np.array([[ln["loss"][0], ln["loss"][-1]] for ln in lines])
    monotone = "monotone" if np.all(np.diff(mid) <= 1e-9) else "not monotone"
    claims = [{"report_figure": "beyond the reports (Li et al. 2018; Goodfellow et al. 2015)",
               "claim": "around a trained network the loss is a basin in filter-normalised "
                        "directions, and the straight path from initialisation to solution "
                        "descends without a barrier",
               "measured": f"{args.model}: loss {trained['loss']:.3g} at the solution, "
                           f"{ends.min():.3g} to {ends.max():.3g} at alpha = -/+{args.span:g} "
                           f"along {len(lines)} filter-normalised directions, "
                           f"{plane['loss'].max():.3g} at the 2-D grid's worst corner; "
                           f"init -> solution: {monotone} between a=0 and 1 "
                           f"({lp[0]:.3g} -> {lp[-1]:.3g} over a in [{ab[0]:.2f}, "
                           f"{ab[-1]:.2f}]); "
                           "trajectory PCA explains "
                           f"{sum(pca['explained'][:2]):.0%} of its variance"}]
    return study.finish(results, claims)


def _plots(study, args, r):
    import matplotlib.pyplot as plt
    from matplotlib import colors

    log = colors.LogNorm()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, loss in enumerate(r["one_d"]["loss_per_direction"][1:], 2):
        ax.plot(r["one_d"]["alpha"], loss, color="C0", lw=0.8, alpha=0.5,
                label=f"direction {i}")
    ax.plot(r["one_d"]["alpha"], r["one_d"]["loss"], color="C0", lw=2, label="direction 1")
    if len(r["one_d"]["loss_per_direction"]) > 1:
        ax.legend(fontsize=8, loc="upper center")
    ax.set_yscale("log")
    ax.set_xlabel("alpha (filter-normalised direction)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if "accuracy" in r["one_d"]:
        ax2 = ax.twinx()
        ax2.plot(r["one_d"]["alpha"], r["one_d"]["accuracy"], "--", color="C1")
        ax2.set_ylabel("training accuracy (dashed)")
    ax.set_title(f"{args.model}: 1-D slice through the solution")
    study.savefig(fig, "landscape_1d.png", "Loss (and, dashed, accuracy) along filter-normalised "
                  "random directions through the trained weights (Li et al. 2018, Fig 2 "
                  "style): direction 1 bold, the other directions thin, showing how much the "
                  "slice depends on the random draw")

    fig = plt.figure(figsize=(13, 5.5))
    ax = fig.add_subplot(1, 2, 1)
    a, b, z = r["two_d"]["alpha"], r["two_d"]["beta"], r["two_d"]["loss"]
    cs = ax.contourf(a, b, z, levels=np.geomspace(z.min(), z.max(), 20), norm=log,
                     cmap="viridis")
    ax.contour(a, b, z, levels=np.geomspace(z.min(), z.max(), 20), colors="k",
               linewidths=0.3)
    ax.plot(0, 0, "r*", ms=10, label="trained")
    fig.colorbar(cs, ax=ax, label="training loss (log)", format="%.3g")
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2, projection="3d")
    aa, bb = np.meshgrid(a, b)
    ax.plot_surface(aa, bb, np.log10(z), cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_zlabel("log10 loss")
    fig.suptitle(f"{args.model}: 2-D loss surface, filter-normalised directions")
    study.savefig(fig, "landscape_2d.png", "Loss over the plane of two filter-normalised "
                  "random directions around the solution: contours and surface")

    t = r["trajectory"]
    fig, ax = plt.subplots(figsize=(7, 5.5))
    z = t["loss"]
    cs = ax.contourf(t["a"], t["b"], z, levels=np.geomspace(z.min(), z.max(), 20), norm=log,
                     cmap="viridis")
    fig.colorbar(cs, ax=ax, label="training loss (log)", format="%.3g")
    c = np.array(t["coords"])
    ax.plot(c[:, 0], c[:, 1], "-o", color="w", ms=4, mec="k")
    for e, (x, y) in zip(t["epochs"], c):
        ax.annotate(str(e), (x, y), color="w", fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ev = t["explained_variance"]
    ax.set_xlabel(f"PC1 ({ev[0]:.0%} of the trajectory's variance)")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})")
    ax.set_title(f"{args.model}: training trajectory (epochs) over the loss in its PCA plane")
    study.savefig(fig, "trajectory_contours.png", "Weights after every epoch projected onto "
                  "the trajectory's two principal directions (centred on the solution), over "
                  "the loss contours of that plane")

    lp = r["linear_path"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lp["a"], lp["loss"], color="C0")
    ax.set_yscale("log")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.axvline(1, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("a: (1 - a) theta_init + a theta_trained")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if "accuracy" in lp:
        ax2 = ax.twinx()
        ax2.plot(lp["a"], lp["accuracy"], "--", color="C1")
        ax2.set_ylabel("training accuracy (dashed)")
    ax.set_title(f"{args.model}: the straight path from initialisation to solution")
    study.savefig(fig, "linear_path.png", "Loss along the straight line from the "
                  "initialisation (a = 0) to the trained weights (a = 1), Goodfellow et al. 2015")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
