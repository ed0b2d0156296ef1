"""Flatness, sensitivity and generalisation (the course's question, beyond the two reports):
train an MNIST classifier with a small and a large batch from the same initialisation and
measure the loss and accuracy along the line theta(a) = (1-a) theta_small + a theta_large,
a in [-1, 2] (Keskar et al. 2017, Fig 3); and, for several batch sizes, the sensitivity = the
Frobenius norm of the Jacobian of the softmax output with respect to the input image, averaged
over test images, beside the test loss and accuracy. Seeds give bands.

    python -m analysis.flatness
    python -m analysis.flatness --model deep_cnn --batch-sizes 64 1024 --epochs 2 --seeds 1
"""

from __future__ import annotations

import sys

import numpy as np

import zoo
from analysis import cli, hvp, measures, plotting, study_files, training_runs
from training import cli_types, modeling

NAME = "flatness"
# Inputs are raw intensities 0-255 (the models normalise inside); the Jacobian is reported per
# unit of intensity on the 0-1 scale, i.e. d output / d (pixel / 255) = 255 * d output / d pixel.
PIXEL_SCALE = 255.0


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="mlp_128",
                            model_help="a zoo classification model")
    g = p.add_argument_group("study")
    g.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    g.add_argument("--batch-sizes", type=cli_types.positive_int, nargs="+",
                   default=[64, 128, 256, 1024, 4096],
                   help="batch sizes of the sensitivity sweep (default: %(default)s)")
    g.add_argument("--small-batch", type=cli_types.positive_int, default=64,
                   help="interpolation end point a=0 (default: %(default)s)")
    g.add_argument("--large-batch", type=cli_types.positive_int, default=1024,
                   help="interpolation end point a=1 (default: %(default)s)")
    g.add_argument("--epochs", type=cli_types.positive_int, default=10,
                   help="epochs per model, the same for every batch size; the recipe's "
                   "learning rate and schedule (default: %(default)s)")
    g.add_argument("--seeds", type=cli_types.positive_int, default=2, help="(default: %(default)s)")
    g.add_argument("--train-limit", type=cli_types.positive_int,
                   help="train on the first N images only")
    m = p.add_argument_group("measurements")
    m.add_argument("--alphas", type=cli_types.positive_int, default=31,
                   help="points on a in [-1, 2] (default: %(default)s)")
    m.add_argument("--eval-train", type=cli_types.positive_int, default=10000,
                   help="training images the path's train loss is measured on: the first N "
                   "(default: %(default)s)")
    m.add_argument("--eval-test", type=cli_types.positive_int, default=10000,
                   help="test images for the path and the test metrics (default: %(default)s)")
    m.add_argument("--jacobian-images", type=cli_types.positive_int, default=1000,
                   help="test images the Jacobian norm is averaged over: the first N "
                   "(default: %(default)s)")
    return p


# ----------------------------------------------------------------------------- measurements


def alphas_grid(n: int) -> np.ndarray:
    """n points on [-1, 2] containing 0 and 1 exactly when (n - 1) is a multiple of 3."""
    a = np.linspace(-1.0, 2.0, n)
    return np.round(a, 12) + 0.0  # linspace's 0.0 may come out as -1e-17; + 0.0 drops -0.0


def interpolate(model_a, model_b, alphas, sets: dict, task: str, progress=None) -> dict:
    """Loss (and accuracy) of theta(a) = (1-a) theta_a + a theta_b on each named (x, y) set,
    measured on a float32 copy (measures.evaluate: float64 arithmetic on its outputs)."""
    wa, wb = hvp.flatten(model_a.trainable_variables), hvp.flatten(model_b.trainable_variables)
    probe = modeling.cast_model(model_a, "float32")  # always a copy: its weights are moved
    out = {name: {"loss": [], "accuracy": []} for name in sets}
    for i, a in enumerate(alphas):
        hvp.assign_flat(probe.trainable_variables, (1.0 - a) * wa + a * wb)
        for name, (x, y) in sets.items():
            r = measures.evaluate(probe, x, y, task)
            out[name]["loss"].append(r["loss"])
            out[name]["accuracy"].append(r.get("accuracy", float("nan")))
        if progress:
            progress(i + 1, len(alphas), f"a={a:+.2f} " + ", ".join(
                f"{n} loss {out[n]['loss'][-1]:.4g}" for n in sets))
    return {"alphas": np.asarray(alphas), "distance": float(np.linalg.norm(wb - wa)), **out}


def jacobian_norms(model, x, batch_size: int = 250) -> np.ndarray:
    """Per image: ||d softmax(model(x)) / d (x / 255)||_F, in the model's own dtype (give it a
    float32 or float64 copy)."""
    import tensorflow as tf

    dtype = model.trainable_variables[0].dtype

    @tf.function(reduce_retracing=True)
    def norms(xb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            p = tf.cast(model(xb, training=False), dtype)
        j = tape.batch_jacobian(p, xb)  # (B, classes, *input shape)
        return PIXEL_SCALE * tf.sqrt(tf.reduce_sum(tf.reshape(j * j, [tf.shape(j)[0], -1]), 1))

    out = [np.asarray(norms(tf.constant(np.asarray(x[i:i + batch_size]), dtype)), np.float64)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


# ----------------------------------------------------------------------------- the study


def main(args) -> dict:
    cli.check_model(args.model, task="classification", dataset=args.dataset)
    if args.quick:
        args.batch_sizes = [16, 128]
        args.small_batch, args.large_batch = 16, 128
        args.epochs, args.seeds = 1, 1
        args.train_limit = args.train_limit or 1024
        args.alphas = 7
        args.eval_train, args.eval_test, args.jacobian_images = 500, 500, 100
    if (args.alphas - 1) % 3:
        raise cli_types.UsageError(f"--alphas {args.alphas}: use 3k+1 points (e.g. 31) so that the "
                                "grid on [-1, 2] holds a=0 and a=1 exactly")
    if args.small_batch == args.large_batch:
        raise cli_types.UsageError("--small-batch and --large-batch must differ")
    sizes = sorted(set(args.batch_sizes) | {args.small_batch, args.large_batch})
    seeds = cli.run_seeds(args, args.seeds)
    ds = training_runs.load(args.dataset, args)
    n_train = min(len(ds.x_train), args.train_limit or len(ds.x_train))
    if max(sizes) > n_train:
        raise cli_types.UsageError(f"batch size {max(sizes)} is larger than the {n_train} "
                                "training images")
    study = study_files.Study(
        NAME, args, batch_sizes_trained=sizes,
        path_train_set=f"first {min(args.eval_train, len(ds.x_train))} training images",
        path_test_set=f"first {min(args.eval_test, len(ds.x_test))} test images",
        jacobian_set=f"first {min(args.jacobian_images, len(ds.x_test))} test images; "
                     "d softmax / d (pixel/255), Frobenius norm, float32",
        landscape_arithmetic="float32 copy of each model (training.modeling.cast_model)")
    sets = {"train": (ds.x_train[:args.eval_train], ds.y_train[:args.eval_train]),
            "test": (ds.x_test[:args.eval_test], ds.y_test[:args.eval_test])}
    x_jac = ds.x_test[:args.jacobian_images]
    alphas = alphas_grid(args.alphas)

    per_seed, total, done = [], len(sizes) * args.seeds, 0
    for seed in seeds:
        models, rows = {}, []
        for bs in sizes:
            config = training_runs.train_config(args.model, args, seed=seed, dataset=args.dataset,
                                         epochs=args.epochs, batch_size=bs,
                                         train_limit=args.train_limit,
                                         dataset_size=len(ds.x_train))
            model, records = training_runs.fit(config, ds, study=study, label=f"batch {bs} s{seed}",
                                        validate=False)
            probe = measures.measured(model)  # float32, whatever policy trained it
            metrics = {k: measures.evaluate(probe, x, y, "classification")
                       for k, (x, y) in sets.items()}
            study.count("loss_evaluations", 2)
            jn = jacobian_norms(probe, x_jac)
            study.count("input_jacobians", len(x_jac))
            rows.append({"batch_size": bs, "steps": config.total_steps,
                         "seconds": sum(r["seconds"] for r in records),
                         "train_loss": metrics["train"]["loss"],
                         "train_accuracy": metrics["train"]["accuracy"],
                         "test_loss": metrics["test"]["loss"],
                         "test_accuracy": metrics["test"]["accuracy"],
                         "jacobian_norm_mean": float(jn.mean()),
                         "jacobian_norm_std": float(jn.std())})
            if bs in (args.small_batch, args.large_batch):
                # the end model's own float32 metrics (the path's a=0 / a=1 must match them)
                models[bs] = (model, metrics)
            done += 1
            study.progress(done, total, f"batch {bs} seed {seed}: test acc "
                           f"{rows[-1]['test_accuracy']:.4f}, |J|_F "
                           f"{rows[-1]['jacobian_norm_mean']:.3g}", phase="models")
        (ma, own_a), (mb, own_b) = models[args.small_batch], models[args.large_batch]
        path = interpolate(ma, mb, alphas, sets, "classification",
                           progress=lambda i, n, m, s=seed: study.progress(
                               i, n, m, phase=f"path s{s}") if i % 10 == 0 or i == n else None)
        study.count("loss_evaluations", len(alphas) * len(sets))
        per_seed.append({"seed": seed, "models": rows, "path": path,
                         "own": {"small": own_a, "large": own_b}})

    results = _summary(args, sizes, alphas, per_seed)
    _plots(study, args, results)
    return study.finish(results, _claims(args, results))


def _summary(args, sizes, alphas, per_seed) -> dict:
    def stack(key):
        return np.array([[m[key] for m in run["models"]] for run in per_seed])

    sweep = {k: stack(k) for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy",
                                    "jacobian_norm_mean", "seconds", "steps")}
    paths = {f"{split}_{metric}": np.array([run["path"][split][metric] for run in per_seed])
             for split in ("train", "test") for metric in ("loss", "accuracy")}
    i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1.0)))
    j_small, j_large = sizes.index(args.small_batch), sizes.index(args.large_batch)
    jac = sweep["jacobian_norm_mean"]
    return {
        "model": args.model, "parameters": zoo.parameter_count(args.model),
        "batch_sizes": sizes, "alphas": alphas, "small_batch": args.small_batch,
        "large_batch": args.large_batch,
        "runs": per_seed,
        "sweep": sweep,
        "sweep_mean": {k: v.mean(0) for k, v in sweep.items()},
        "path_curves": paths,
        "endpoint_index": {"small": i0, "large": i1},
        "distance_mean": float(np.mean([r["path"]["distance"] for r in per_seed])),
        "spearman_jacobian_vs_batch": measures.correlation(np.log(sizes), jac.mean(0)),
        "spearman_test_loss_vs_jacobian": measures.correlation(jac.mean(0),
                                                             sweep["test_loss"].mean(0)),
        # train minus test accuracy and test minus train loss (train = the path's subset)
        "generalisation_gap": {
            "accuracy": (sweep["train_accuracy"] - sweep["test_accuracy"]).mean(0),
            "loss": (sweep["test_loss"] - sweep["train_loss"]).mean(0)},
        "train_accuracy_small_minus_large": float(
            (sweep["train_accuracy"][:, j_small] - sweep["train_accuracy"][:, j_large]).mean()),
        "test_accuracy_small_minus_large": float(
            (sweep["test_accuracy"][:, j_small] - sweep["test_accuracy"][:, j_large]).mean()),
        # sharpness along the line: train-loss ratio at a step of 0.2 of the distance away from
        # each end point, outward (a=-0.2 for small, a=1.2 for large), per seed
        "outward_rise": _outward_rise(alphas, paths["train_loss"]),
    }


def _outward_rise(alphas, losses) -> dict:
    out = {}
    for name, end, step in (("small", 0.0, -0.2), ("large", 1.0, 0.2)):
        i, j = int(np.argmin(np.abs(alphas - end))), int(np.argmin(np.abs(alphas - end - step)))
        out[name] = {"at": float(alphas[j]), "from": float(alphas[i]),
                     "ratio": (losses[:, j] / losses[:, i]).tolist()}
    return out


def _claims(args, r) -> list[dict]:
    sizes = r["batch_sizes"]
    m = r["sweep_mean"]
    rise = r["outward_rise"]
    gap = r["generalisation_gap"]["accuracy"]
    js, jl = sizes.index(args.small_batch), sizes.index(args.large_batch)
    table = ", ".join(f"{b}: acc {a:.4f} |J| {j:.3g}" for b, a, j in
                      zip(sizes, m["test_accuracy"], m["jacobian_norm_mean"]))
    return [
        {"report_figure": "none (course question; Keskar et al. 2017 Fig 3)",
         "claim": "large-batch training finds sharper minima that generalise worse",
         "measured": f"{args.model}, {args.epochs} epochs, {len(r['runs'])} seeds: test accuracy "
                     f"batch {args.small_batch} minus batch {args.large_batch} "
                     f"{r['test_accuracy_small_minus_large']:+.4f}, train accuracy "
                     f"{r['train_accuracy_small_minus_large']:+.4f} (equal epochs: the large "
                     f"batch takes fewer steps); generalisation gap (train - test accuracy) "
                     f"{gap[js]:.4f} at batch {args.small_batch} vs {gap[jl]:.4f} at "
                     f"{args.large_batch}; train loss changes "
                     f"x{np.mean(rise['small']['ratio']):.3g} going 0.2 of the distance "
                     f"outward from the small-batch end, x{np.mean(rise['large']['ratio']):.3g} "
                     "from the large-batch end (line measure of sharpness, not "
                     "scale-invariant)"},
        {"report_figure": "none (course question)",
         "claim": "sensitivity (input-Jacobian norm) tracks generalisation across batch sizes",
         "measured": "Spearman(log batch, |J|_F) "
                     f"{measures.format_correlation(r['spearman_jacobian_vs_batch'])}; "
                     "Spearman(|J|_F, test loss) "
                     f"{measures.format_correlation(r['spearman_test_loss_vs_jacobian'])}; "
                     f"per batch size: {table}"},
    ]


def _plots(study, args, r):
    import matplotlib.pyplot as plt

    alphas = np.asarray(r["alphas"])
    paths = r["path_curves"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax2 = ax.twinx()
    for split, color in (("train", "C0"), ("test", "C1")):
        plotting.band(ax, alphas, paths[f"{split}_loss"], f"{split} loss", color=color, log=True)
        plotting.band(ax2, alphas, paths[f"{split}_accuracy"], f"{split} accuracy",
                    color=color)
        ax2.lines[-1].set_linestyle("--")
    ax.set_yscale("log")
    ax.set_xlabel(f"a   (0: batch {args.small_batch}, 1: batch {args.large_batch})")
    ax.set_ylabel("cross-entropy (solid, log)")
    ax2.set_ylabel("accuracy (dashed)")
    for a in (0.0, 1.0):
        ax.axvline(a, color="gray", lw=0.8, ls=":")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=4)
    ax.set_title(f"{args.model}: theta(a) = (1-a) theta_small + a theta_large "
                 f"(distance {r['distance_mean']:.3g})")
    study.savefig(fig, "interpolation.png",
                  "Loss (solid, log scale) and accuracy (dashed) along the line through the "
                  f"batch-{args.small_batch} (a=0) and batch-{args.large_batch} (a=1) models, "
                  f"train on {study.config['path_train_set']}, test on "
                  f"{study.config['path_test_set']}; geometric mean / mean and min-max over "
                  "seeds")

    sizes = np.asarray(r["batch_sizes"])
    sw = r["sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    plotting.band(ax, sizes, sw["jacobian_norm_mean"], "sensitivity |dp/dx|_F", color="C3")
    ax.set_xscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("mean Frobenius norm of the input Jacobian", color="C3")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    axb = ax.twinx()
    plotting.band(axb, sizes, sw["test_loss"], "test loss", color="C1", log=True)
    axb.set_ylabel("test loss", color="C1")
    axb.legend(fontsize=8, loc="upper right")
    ax.set_title("sensitivity and test loss against batch size")
    ax = axes[1]
    for split, color in (("train", "C0"), ("test", "C1")):
        plotting.band(ax, sizes, sw[f"{split}_accuracy"], f"{split} accuracy", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{args.epochs} epochs each, the recipe's learning rate")
    study.savefig(fig, "sensitivity.png",
                  "Left: sensitivity = mean over "
                  f"{study.config['jacobian_set']} against batch size, with the test loss; "
                  "right: train and test accuracy (train on the path's training subset); "
                  "mean and spread over seeds")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
