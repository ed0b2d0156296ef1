"""Hessian of a trained zoo model's loss, in the style of PyHessian: top-k eigenvalues (Lanczos
on Hessian-vector products), trace (Hutchinson), eigenvalue density (stochastic Lanczos
quadrature), and, for models small enough, the exact spectrum to check all three against.

    python -m analysis.hessian                          # sinc_deep_50_10_4_tanh, exact check
    python -m analysis.hessian --model deep_cnn --examples 1000 --dtype float32
    python -m analysis.hessian --quick
"""

from __future__ import annotations

import sys

import numpy as np

from analysis import cli, hvp, study_files, training_runs
from training import cli_types

NAME = "hessian"


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="sinc_deep_50_10_4_tanh")
    g = p.add_argument_group("training before the measurement")
    g.add_argument("--epochs", type=cli_types.positive_int,
                   help="training epochs (default: the recipe's)")
    g.add_argument("--steps-per-epoch", type=cli_types.positive_int)
    g.add_argument("--train-limit", type=cli_types.positive_int,
                   help="train on the first N examples only")
    h = p.add_argument_group("curvature")
    h.add_argument("--examples", type=cli_types.positive_int, default=1000,
                   help="training examples the loss is measured on (default: %(default)s)")
    h.add_argument("--batch-size", type=cli_types.positive_int, default=1000,
                   help="examples per HVP batch (memory) (default: %(default)s)")
    h.add_argument("--dtype", choices=("float32", "float64"),
                   help="curvature arithmetic (default: float64 up to 200k parameters)")
    h.add_argument("--method", choices=hvp.METHODS, default="double_backprop",
                   help="HVP method (CPU: double backprop 2.0x a gradient, fwd-over-rev 2.9x)")
    h.add_argument("--top-k", type=cli_types.positive_int, default=5)
    h.add_argument("--lanczos-steps", type=cli_types.positive_int, default=40)
    h.add_argument("--trace-samples", type=cli_types.integer(2), default=100,
                   help="Rademacher samples, at least 2 for a standard error "
                   "(default: %(default)s)")
    h.add_argument("--slq-runs", type=cli_types.positive_int, default=5)
    h.add_argument("--slq-steps", type=cli_types.positive_int, default=60)
    h.add_argument("--exact-max", type=cli_types.non_negative_int, default=3000,
                   help="compute the exact spectrum up to this many parameters")
    return p


def main(args) -> dict:
    spec = cli.check_model(args.model)
    if args.quick:
        args.examples = min(args.examples, 256)
        args.trace_samples = min(args.trace_samples, 12)
        args.slq_runs = min(args.slq_runs, 2)
        args.slq_steps = min(args.slq_steps, 20)
        args.lanczos_steps = min(args.lanczos_steps, 30)
        args.epochs = args.epochs or 1
        args.steps_per_epoch = args.steps_per_epoch or 30
        args.train_limit = args.train_limit or 2048
    study = study_files.Study(NAME, args)
    ds = training_runs.load(spec.dataset, args)
    config = training_runs.train_config(args.model, args, epochs=args.epochs,
                                 steps_per_epoch=args.steps_per_epoch,
                                 train_limit=args.train_limit, test_limit=1000)
    study.log(f"training {args.model}: {config.epochs} epochs x {config.steps_per_epoch} steps")
    model, records = training_runs.fit(config, ds, study=study, label=args.model)
    n_params = int(model.count_params())
    dtype = args.dtype or ("float64" if n_params <= 200_000 else "float32")
    study.precision["measurement"] = dtype
    x, y = ds.x_train[: args.examples], ds.y_train[: args.examples]
    obj = hvp.Objective(model, spec.recipe.loss, x, y, dtype=dtype,
                        batch_size=args.batch_size, method=args.method)
    loss, grad = obj.value_and_gradient()
    study.log(f"{obj.n} parameters in {dtype}; loss {loss:.6g}, |g| {np.linalg.norm(grad):.3g}")

    def progress(label):
        return lambda i, n, msg: study.progress(i, n, msg, phase=label)

    top = hvp.lanczos_top(obj.hvp, obj.n, k=args.top_k, steps=args.lanczos_steps,
                          seed=args.seed, progress=progress("lanczos"))
    trace = hvp.hutchinson_trace(obj.hvp, obj.n, args.trace_samples, seed=args.seed + 1,
                                 progress=progress("hutchinson"))
    dens = hvp.slq(obj.hvp, obj.n, args.slq_runs, args.slq_steps, seed=args.seed + 2,
                   progress=progress("slq"))
    exact = None
    if obj.n <= args.exact_max:
        study.log(f"exact Hessian ({obj.n} x {obj.n})")
        h = obj.hessian(max_n=args.exact_max)
        ev = np.linalg.eigvalsh(h)
        exact = {"eigenvalues": ev, "trace": float(np.trace(h)),
                 "top": ev[::-1][: args.top_k],
                 "hutchinson_expected_stderr": float(
                     np.sqrt(hvp.hutchinson_variance(h) / args.trace_samples))}

    all_nodes = np.concatenate(dens["nodes"])
    lo, hi = all_nodes.min(), all_nodes.max()
    if exact is not None:
        lo, hi = min(lo, exact["eigenvalues"].min()), max(hi, exact["eigenvalues"].max())
    pad = 0.05 * (hi - lo + 1e-12)
    grid = np.linspace(lo - pad, hi + pad, 600)
    sigma = max((hi - lo) / 200, 1e-8)
    dgrid = hvp.density(dens["nodes"], dens["weights"], grid, sigma)

    for k, v in obj.costs().items():
        study.count(k, v)
    _plots(study, args, top, trace, grid, dgrid, exact, obj.n, dtype)

    claims = [{
        "report_figure": "none (beyond the reports)",
        "claim": "PyHessian-style curvature: top eigenvalues, trace and density from HVPs only",
        "measured": (f"{args.model}: lambda_max {top['eigenvalues'][0]:.5g} in {top['steps']} "
                     f"Lanczos steps; trace {trace['trace']:.5g} +- {trace['stderr']:.2g}"
                     + (f"; exact lambda_max {exact['top'][0]:.5g}, exact trace "
                        f"{exact['trace']:.5g}" if exact else "")),
    }]
    results = {
        "model": args.model, "parameters": obj.n, "dtype": dtype, "examples": len(x),
        "training": records, "loss": loss, "grad_norm": float(np.linalg.norm(grad)),
        "lanczos": {k: top[k] for k in ("eigenvalues", "residuals", "smallest", "steps",
                                        "history")},
        "hutchinson": {k: trace[k] for k in ("trace", "stderr", "samples", "running_mean")},
        "slq": {"nodes": dens["nodes"], "weights": dens["weights"], "grid": grid,
                "density": dgrid, "sigma": sigma},
        "exact": exact,
    }
    return study.finish(results, claims)


def _plots(study, args, top, trace, grid, dgrid, exact, n, dtype):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(grid, np.maximum(dgrid, 1e-12), label=f"SLQ ({args.slq_runs} runs)")
    if exact is not None:
        ax.hist(exact["eigenvalues"], bins=120, density=True, alpha=0.4, color="gray",
                label="exact eigenvalues")
    ax.set_ylim(bottom=max(1e-8, dgrid.max() * 1e-7))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"{args.model}: Hessian eigenvalue density ({n:,} params, {dtype})")
    ax.legend()
    study.savefig(fig, "density.png", "Eigenvalue density by stochastic Lanczos quadrature"
                  + (" over a histogram of the exact spectrum" if exact is not None else ""))

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in top["history"]]
    k = len(top["eigenvalues"])
    for i in range(k):
        vals = [h["top"][i] if i < len(h["top"]) else np.nan for h in top["history"]]
        ax.plot(steps, vals, "-o", markersize=3, label=f"Ritz value {i + 1}")
        if exact is not None:
            ax.axhline(exact["top"][i], color="k", lw=0.6, ls="--")
    ax.set_xlabel("Lanczos step (= Hessian-vector products)")
    ax.set_ylabel("eigenvalue")
    ax.set_title("top-k eigenvalues: Lanczos convergence" + (" (dashed: exact)" if exact else ""))
    ax.legend(fontsize=8)
    study.savefig(fig, "top_eigenvalues.png", "Lanczos estimates of the top eigenvalues per "
                  "step" + ("; dashed lines are numpy.linalg.eigvalsh of the exact Hessian"
                            if exact is not None else ""))

    fig, ax = plt.subplots(figsize=(7, 4))
    m = np.arange(1, len(trace["running_mean"]) + 1)
    run = trace["running_mean"]
    sd = np.array([trace["samples"][:i].std(ddof=1) / np.sqrt(i) if i > 1 else 0 for i in m])
    ax.plot(m, run, label="Hutchinson running mean")
    ax.fill_between(m, run - 2 * sd, run + 2 * sd, alpha=0.25, label="+-2 standard errors")
    if exact is not None:
        ax.axhline(exact["trace"], color="k", ls="--", label="exact trace")
    ax.set_xlabel("Rademacher samples (= Hessian-vector products)")
    ax.set_ylabel("trace estimate")
    ax.set_title("Hessian trace (Hutchinson)")
    ax.legend()
    study.savefig(fig, "trace.png", "Hutchinson trace estimate with its +-2 standard-error band"
                  + (" and the exact trace" if exact is not None else ""))


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
