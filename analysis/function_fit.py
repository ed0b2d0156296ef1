"""Report 1, Figs 1-6: three ~600-weight networks fitting y = sin(5*pi*x)/(5*pi*x) (or any
function of x given by --function), over several seeds: predictions against the ground truth,
training-loss curves and gradient-norm curves (bands over seeds), final test MSE, and whether
depth helps and tanh beats sigmoid in our runs.

    python -m analysis.function_fit
    python -m analysis.function_fit --function "np.sin(3*x) * np.exp(-x**2)" --seeds 5
"""

from __future__ import annotations

import sys

import numpy as np

import zoo
from analysis import cli, hvp, measures, plotting, study_files, training_runs
from training import cli_types, data

NAME = "function_fit"
DEFAULT_MODELS = ("sinc_shallow_300_tanh", "sinc_deep_50_10_4_tanh", "sinc_deep_60_8_6_sigmoid")
SAFE = {"np": np, "sin": np.sin, "cos": np.cos, "exp": np.exp, "pi": np.pi, "abs": np.abs,
        "tanh": np.tanh, "sqrt": np.sqrt}


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0])
    g = p.add_argument_group("study")
    g.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                   help="regression zoo models with input x (default: the report's three)")
    g.add_argument("--function", default=None,
                   help="numpy expression in x (default: the report's sin(5*pi*x)/(5*pi*x))")
    g.add_argument("--seeds", type=cli_types.positive_int, default=3,
                   help="runs per model (default: %(default)s)")
    g.add_argument("--epochs", type=cli_types.positive_int, help="default: the recipe's")
    return p


def dataset(args) -> data.Dataset:
    ds = data.make_sinc(seed=args.seed)
    if not args.function:
        return ds

    def f(x):
        try:
            y = eval(args.function, {"__builtins__": {}}, {**SAFE, "x": x.astype(np.float64)})
        except Exception as e:  # noqa: BLE001 - a user's expression
            raise cli_types.UsageError(f"--function {args.function!r} failed: {e}") from None
        y = np.broadcast_to(np.asarray(y, dtype=np.float64), x.shape)
        if not np.all(np.isfinite(y)):
            raise cli_types.UsageError(f"--function {args.function!r} is not finite on [-1, 1]")
        return y.astype(np.float32)

    return data.Dataset("function", ds.x_train, f(ds.x_train), ds.x_test, f(ds.x_test),
                        source=f"generated: y = {args.function}, x as for sinc")


def main(args) -> dict:
    for m in args.models:
        spec = cli.check_model(m, task="regression")
        if spec.inputs.shape != (1,):
            raise cli_types.UsageError(f"{m} does not take a scalar x")
    if args.quick:
        args.seeds = min(args.seeds, 2)
        args.epochs = args.epochs or 3
    seeds = cli.run_seeds(args, args.seeds)
    study = study_files.Study(NAME, args, function=args.function or "sin(5*pi*x)/(5*pi*x)")
    ds = dataset(args)
    per_model = {}
    total = len(args.models) * args.seeds
    done = 0
    for name in args.models:
        runs = []
        for seed in seeds:
            config = training_runs.train_config(name, args, seed=seed, epochs=args.epochs,
                                         steps_per_epoch=8 if args.quick else None,
                                         dataset_size=len(ds.x_train))
            curve = {"loss": [], "grad_norm": []}
            obj_holder = {}

            def on_epoch(epoch, model, curve=curve, holder=obj_holder):
                # Full-set loss and gradient in float32: on the model itself if it trains in
                # float32 (shared weights), else on a float32 copy given this epoch's weights.
                if "obj" not in holder:
                    holder["obj"] = hvp.Objective(model, "mse", ds.x_train, ds.y_train,
                                                  dtype="float32")
                obj = holder["obj"]
                if obj.model is not model:
                    obj.set_flat(hvp.flatten(model.trainable_variables))
                loss, g = obj.value_and_gradient()
                curve["loss"].append(loss)
                curve["grad_norm"].append(float(np.linalg.norm(g)))

            model, records = training_runs.fit(config, ds, on_epoch=on_epoch, validate=False)
            study.count("gradients", obj_holder["obj"].gradients)
            probe = measures.measured(model)  # float32 whatever policy trained it
            pred = np.asarray(probe(ds.x_test, training=False), np.float64).ravel()
            mse = float(np.mean((pred - ds.y_test.ravel()) ** 2))
            runs.append({"seed": seed, "test_mse": mse, "prediction": pred, **curve,
                         "seconds": sum(r["seconds"] for r in records)})
            done += 1
            study.progress(done, total, f"{name} seed {seed}: test MSE {mse:.3g}", phase="fits")
        mses = np.array([r["test_mse"] for r in runs])
        per_model[name] = {
            "parameters": zoo.parameter_count(name),
            "description": zoo.get_spec(name).description,
            "test_mse_mean": float(mses.mean()), "test_mse_std": float(mses.std()),
            "test_mse_runs": mses, "runs": runs,
        }
    verdict = _verdict(per_model, decide=not args.quick)
    _plots(study, ds, per_model)
    claims = [
        {"report_figure": "report 1, Figs 1-6",
         "claim": "at ~600 weights, deeper networks fit the function better",
         "measured": verdict["depth_helps_text"], "verdict": verdict["depth_helps_verdict"]},
        {"report_figure": "report 1, Figs 1-6",
         "claim": "tanh beats sigmoid at equal size",
         "measured": verdict["tanh_beats_sigmoid_text"],
         "verdict": verdict["tanh_beats_sigmoid_verdict"]},
    ]
    return study.finish({"x_test": ds.x_test.ravel(), "y_test": ds.y_test.ravel(),
                         "models": per_model, "verdict": verdict}, claims)


def _verdict(per_model, decide: bool) -> dict:
    """Per claim: whether it holds in our runs (None unless `decide`: a --quick run is too
    small to decide), its verdict ("yes" / "no" / SMOKE_VERDICT) and the measured numbers."""
    m = {k: v["test_mse_runs"] for k, v in per_model.items()}
    shallow, deep_tanh, deep_sig = DEFAULT_MODELS
    out = {}
    for key, better, worse, names in (
            ("depth_helps", deep_tanh, shallow, ("deep tanh", "shallow tanh", "deep")),
            ("tanh_beats_sigmoid", deep_tanh, deep_sig, ("deep tanh", "deep sigmoid", "tanh"))):
        if better not in m or worse not in m:
            out[key] = None
            out[f"{key}_verdict"] = None
            out[f"{key}_text"] = "not measured (the report's models were not all run)"
            continue
        wins = int(sum(b < w for b in m[better] for w in m[worse]))
        holds = bool(np.mean(m[better]) < np.mean(m[worse]))
        out[key] = holds if decide else None
        out[f"{key}_verdict"] = ("yes" if holds else "no") if decide else study_files.SMOKE_VERDICT
        out[f"{key}_text"] = (
            f"mean test MSE {names[0]} {np.mean(m[better]):.3g} vs {names[1]} "
            f"{np.mean(m[worse]):.3g} over {len(m[better])} and {len(m[worse])} seeds "
            f"({names[2]} better in {wins}/{len(m[better]) * len(m[worse])} pairs)")
    return out


def _plots(study, ds, per_model):
    import matplotlib.pyplot as plt

    x = ds.x_test.ravel()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, ds.y_test.ravel(), "k", lw=2, label="ground truth")
    for name, r in per_model.items():
        preds = np.array([run["prediction"] for run in r["runs"]])
        plotting.band(ax, x, preds, f"{name} (MSE {r['test_mse_mean']:.2g})")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)
    ax.set_title("predictions vs ground truth (mean and spread over seeds)")
    study.savefig(fig, "predictions.png", "Report 1 Figs 1-2: every model's prediction against "
                  "the ground truth on a 1,000-point test grid; band = spread over seeds")
    for key, label, fname, figs in (("loss", "training loss (MSE, full set)", "loss.png",
                                     "Figs 3-4"),
                                    ("grad_norm", "gradient norm (full set)", "grad_norm.png",
                                     "Figs 5-6")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in per_model.items():
            curves = np.array([run[key] for run in r["runs"]])
            plotting.band(ax, np.arange(curves.shape[1]), curves, name, log=True)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        study.savefig(fig, fname, f"Report 1 {figs}: {label} per epoch; line = geometric mean "
                      "over seeds, band = min-max")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
