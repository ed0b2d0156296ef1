"""Parameters against generalization: one zoo model made narrower and wider (every hidden Dense
layer's units and every convolution's filters multiplied by the same factor; the output layer
kept), each trained the same way on the same images; final train and test loss and accuracy
against parameter count, a band over seeds.

    python -m analysis.params_vs_generalization
    python -m analysis.params_vs_generalization --model deep_cnn --factors 0.125 0.25 0.5 1
"""

from __future__ import annotations

import copy
import sys

import numpy as np

from analysis import cli, measures, plotting, study_files, training_runs
from training import cli_types, precision

NAME = "params_vs_generalization"
# mlp_128's hidden layer becomes 2, 4, ..., 1024 units.
DEFAULT_FACTORS = [2 ** k / 128 for k in range(1, 11)]


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="mlp_128",
                            model_help="a zoo model whose width is scaled")
    g = p.add_argument_group("study")
    g.add_argument("--factors", type=cli_types.positive_float, nargs="+", default=DEFAULT_FACTORS,
                   help="width multipliers, one model each (default: hidden widths 2..1024 "
                   "for mlp_128)")
    g.add_argument("--train-limit", type=cli_types.positive_int, default=5000,
                   help="train on the first N images; a small set shows the gap (default: "
                   "%(default)s)")
    g.add_argument("--epochs", type=cli_types.positive_int, default=30,
                   help="(default: %(default)s)")
    g.add_argument("--seeds", type=cli_types.positive_int, default=2,
                   help="runs per width (default: %(default)s)")
    return p


def scaled_model(model, factor: float):
    """A fresh (re-initialised) copy of a functional Keras model with every hidden Dense layer's
    units and every convolution's filters multiplied by `factor` (at least 1); layers that
    produce the model's outputs keep their size, so the task is unchanged."""
    config = copy.deepcopy(model.get_config())
    if "layers" not in config or "output_layers" not in config:
        raise cli_types.UsageError(
            f"{model.name} is not a functional model; cannot scale its width")
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):  # one output is stored flat: [name, 0, 0]
        outputs = [outputs]
    produces_output = {name for name, *_ in outputs}
    # An output activation layer takes the last Dense as its only input: keep that one too.
    for layer in config["layers"]:
        if layer["name"] in produces_output and layer["class_name"] == "Activation":
            produces_output |= {_inbound_names(layer)[0]}
    scaled = 0
    for layer in config["layers"]:
        layer.pop("build_config", None)  # the recorded input shapes change with the widths
        c = layer["config"]
        if layer["name"] in produces_output:
            continue
        for key in ("units", "filters"):
            if key in c:
                c[key] = max(1, int(round(c[key] * factor)))
                scaled += 1
    if not scaled:
        raise cli_types.UsageError(
            f"{model.name} has no hidden Dense or convolution layer to scale")
    return model.__class__.from_config(config)


def _inbound_names(layer: dict) -> list[str]:
    names = []

    def walk(o):
        if isinstance(o, dict):
            if "keras_history" in o.get("config", {}):
                names.append(o["config"]["keras_history"][0])
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):  # get_config keeps some tuples
            for v in o:
                walk(v)

    walk(layer.get("inbound_nodes", []))
    return names


def main(args) -> dict:
    import zoo

    spec = cli.check_model(args.model)
    if args.quick:
        args.factors = [0.25, 1.0] if len(args.factors) > 2 else args.factors
        args.train_limit, args.epochs, args.seeds = 512, 2, min(args.seeds, 2)
    factors = sorted(set(args.factors))
    seeds = cli.run_seeds(args, args.seeds)
    study = study_files.Study(NAME, args)
    ds = training_runs.load(spec.dataset, args)
    n = min(args.train_limit, len(ds.x_train))
    # Each layer's config pins its dtype policy, and the scaled copies keep it: build the base
    # in the policy the runs train in (it used to be float32 whatever --precision said).
    precision.apply(study.precision["training"])
    base = zoo.create_model(args.model)
    rows, total, done = [], len(factors) * args.seeds, 0
    for factor in factors:
        runs = []
        for seed in seeds:
            config = training_runs.train_config(args.model, args, seed=seed, epochs=args.epochs,
                                         train_limit=n, dataset_size=len(ds.x_train))
            model, _ = training_runs.fit(config, ds, validate=False,
                                  build=lambda f=factor: scaled_model(base, f))
            train = measures.evaluate(model, ds.x_train[:n], ds.y_train[:n], spec.task)
            test = measures.evaluate(model, ds.x_test, ds.y_test, spec.task)
            study.count("loss_evaluations", 2)
            study.count("training_steps", config.total_steps)
            runs.append({"seed": seed, "train": train, "test": test})
            done += 1
            study.progress(done, total, f"x{factor:g} ({model.count_params():,} weights): "
                           f"train loss {train['loss']:.3g}, test loss {test['loss']:.3g}",
                           phase="models")
        rows.append({"factor": factor, "parameters": int(model.count_params()),
                     "widths": _widths(model), "runs": runs,
                     "compute_dtypes": sorted({layer.compute_dtype for layer in model.layers
                                               if layer.weights})})
    results = {"model": args.model, "task": spec.task, "train_images": n, "widths": rows,
               **_series(rows, spec.task)}
    _plots(study, args, results)
    best = int(np.argmin(results["test_loss_mean"]))
    gap = np.array(results["test_loss_mean"]) - np.array(results["train_loss_mean"])
    claims = [{"report_figure": "beyond report 1 (course question: parameters vs generalization)",
               "claim": "more parameters fit the training set better; test loss need not follow",
               "measured": f"{args.model} scaled x{factors[0]:g}..x{factors[-1]:g} "
                           f"({rows[0]['parameters']:,}-{rows[-1]['parameters']:,} weights, "
                           f"{n:,} images): train loss {results['train_loss_mean'][0]:.3g} -> "
                           f"{results['train_loss_mean'][-1]:.3g}; lowest test loss "
                           f"{results['test_loss_mean'][best]:.3g} at "
                           f"{rows[best]['parameters']:,} weights; test-train gap "
                           f"{gap[0]:.3g} -> {gap[-1]:.3g}"}]
    return study.finish(results, claims)


def _widths(model) -> list[int]:
    return [int(getattr(layer, "units", 0) or getattr(layer, "filters", 0))
            for layer in model.layers if hasattr(layer, "units") or hasattr(layer, "filters")]


def _series(rows: list[dict], task: str) -> dict:
    """Per width: mean over seeds of each final metric, and the per-seed matrix for the bands."""
    metrics = ["loss", "accuracy"] if task == "classification" else ["loss"]
    out = {"parameters": [r["parameters"] for r in rows]}
    for split in ("train", "test"):
        for m in metrics:
            runs = np.array([[run[split][m] for run in r["runs"]] for r in rows])  # width x seed
            out[f"{split}_{m}_runs"] = runs.T
            out[f"{split}_{m}_mean"] = runs.mean(1)
    return out


def _plots(study, args, r):
    import matplotlib.pyplot as plt

    metrics = ["loss", "accuracy"] if r["task"] == "classification" else ["loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    x = np.array(r["parameters"])
    for ax, m in zip(axes[0], metrics):
        for split, color in (("train", "C0"), ("test", "C3")):
            plotting.band(ax, x, np.array(r[f"{split}_{m}_runs"]), split, color=color)
            ax.plot(x, r[f"{split}_{m}_mean"], "o", color=color, ms=4)
        ax.set_xscale("log")
        if m == "loss":
            ax.set_yscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"final {m}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{args.model} at {len(x)} widths, {r['train_images']:,} training images, "
                 f"{args.epochs} epochs each")
    study.savefig(fig, "params_vs_generalization.png", "Final train and test loss and accuracy "
                  "against parameter count (width scaled); mean, min-max and +-1 std over seeds")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
