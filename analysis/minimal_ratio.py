"""Report 1, Fig 14: the "minimal ratio" (fraction of positive Hessian eigenvalues) at points
where the gradient norm is ~0, against the loss there, over many training runs of a small model.

Each run: initialise (seed), train normally (full-batch, the recipe's optimizer and learning
rate, a run-dependent number of steps so the losses spread), then minimise the squared gradient
norm ||g||^2 (its gradient 2 H g from hvp.hvp_tf) to reach a point with ||g|| ~ 0. There, in
float64: the loss, ||g||, ||H g||, the exact Hessian spectrum with positive / negative /
near-zero counts (tolerance band relative to the largest |eigenvalue|), and the perturbation
proxy of public solutions (fraction of N small random weight perturbations that raise the
loss) beside the quadratic model's prediction of that proxy.

    python -m analysis.minimal_ratio                      # 100 runs of sinc_deep_50_10_4_tanh
    python -m analysis.minimal_ratio --model sinc_deep_60_8_6_sigmoid --runs 30
    python -m analysis.minimal_ratio --quick
"""

from __future__ import annotations

import sys
import time

import numpy as np

import zoo
from analysis import cli, hvp, measures, plotting, study_files, training_runs
from training import cli_types, data

NAME = "minimal_ratio"
TOLERANCE_SWEEP = (1e-12, 1e-10, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="sinc_deep_50_10_4_tanh",
                            model_help="a zoo model small enough for an exact Hessian")
    g = p.add_argument_group("runs")
    g.add_argument("--runs", type=cli_types.positive_int, default=100,
                   help="training runs (default: %(default)s)")
    g.add_argument("--examples", type=cli_types.positive_int, default=300,
                   help="training points, full batch (sinc: generated; others: the first N) "
                   "(default: %(default)s)")
    g.add_argument("--train-steps", type=cli_types.positive_int, default=2000,
                   help="most full-batch training steps of a run; each run draws its own "
                   "number log-uniformly from [train-steps/20, train-steps] (default: %(default)s)")
    g.add_argument("--gn-steps", type=cli_types.non_negative_int, default=1000,
                   help="Adam steps on ||g||^2 (default: %(default)s)")
    g.add_argument("--gn-lr", type=cli_types.positive_float, default=1e-3,
                   help="Adam learning rate on ||g||^2, cosine-decayed to 1%% "
                   "(default: %(default)s)")
    g.add_argument("--max-params", type=cli_types.positive_int, default=2000,
                   help="refuse models with more weights (the exact Hessian is n x n and costs "
                   "n HVPs) (default: %(default)s)")
    c = p.add_argument_group("counting and flags")
    c.add_argument("--eig-tol", type=cli_types.non_negative_float, default=1e-6,
                   help="|eigenvalue| <= eig-tol * max|eigenvalue| counts as zero "
                   "(default: %(default)s)")
    c.add_argument("--grad-tol", type=cli_types.non_negative_float, default=1e-3,
                   help="||g|| <= grad-tol: a critical point (default: %(default)s)")
    c.add_argument("--flat-tol", type=cli_types.non_negative_float, default=1e-2,
                   help="||g|| > grad-tol but ||Hg|| <= flat-tol * max|eigenvalue| * ||g||: "
                   "gradient-flat (Frye et al. 2021) (default: %(default)s)")
    c.add_argument("--perturbations", type=cli_types.positive_int, default=500,
                   help="random perturbations per point for the proxy (default: %(default)s)")
    c.add_argument("--perturb-scale", type=cli_types.positive_float, default=1e-3,
                   help="perturbation = scale * N(0, I) per weight (default: %(default)s)")
    return p


# ----------------------------------------------------------------------------- counting


def minimal_ratio(eigenvalues, rel_tol: float) -> dict:
    """Counts with the band |lambda| <= rel_tol * max|lambda| as zero; `ratio` = positive / all
    (the report's fraction of positive eigenvalues), `ratio_nonzero` = positive / (pos + neg)."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    scale = float(np.abs(ev).max()) if ev.size else 0.0
    counts = hvp.eigen_counts(ev, rel_tol * scale)
    nonzero = counts["positive"] + counts["negative"]
    return {**counts, "relative_tolerance": float(rel_tol), "n": int(ev.size),
            "ratio": counts["positive"] / ev.size,
            "ratio_nonzero": counts["positive"] / nonzero if nonzero else 1.0}


def classify(grad_norm: float, hg_norm: float, lam_max: float, grad_tol: float,
             flat_tol: float) -> str:
    """critical (||g|| small), gradient_flat (g nearly in H's kernel but not small: Frye et
    al. 2021), or not_converged."""
    if grad_norm <= grad_tol:
        return "critical"
    if hg_norm <= flat_tol * lam_max * grad_norm:
        return "gradient_flat"
    return "not_converged"


def perturbation_proxy(loss_at, w0: np.ndarray, loss0: float, deltas: np.ndarray) -> float:
    """Fraction of perturbations w0 + delta_i with a higher loss than w0 (public solutions)."""
    losses = np.asarray(loss_at(w0[None, :] + deltas))
    return float(np.mean(losses > loss0))


# ----------------------------------------------------------------------------- one model, many runs


class Runner:
    """Everything of a run traced once into tf.functions on one float64 copy of the model:
    training, ||g||^2 minimisation, measurement (exact Hessian = H e_i for all i through
    hvp.hvp_tf in one map_fn), perturbed losses. Runs differ only in their weights."""

    def __init__(self, model, loss, x, y, optimizer: str, learning_rate: float):
        import tensorflow as tf

        self.obj = hvp.Objective(model, loss, x, y, dtype="float64")  # one full batch
        obj = self.obj
        self.n = obj.n
        xb, yb = obj.batches[0]
        params, shapes, mean_loss = obj.params, obj.shapes, obj.mean_loss
        f64 = tf.float64

        def grad():
            with tf.GradientTape() as tape:
                value = mean_loss(xb, yb)
            return value, hvp.flatten_tf(tape.gradient(value, params))

        def hv(v):
            return hvp.hvp_tf(mean_loss, params, xb, yb, v, obj.method)

        def add(step):
            for p, part in zip(params, hvp.split_tf(step, shapes)):
                p.assign_add(part)

        def assign(w):
            for p, part in zip(params, hvp.split_tf(w, shapes)):
                p.assign(part)

        def adam_loop(direction, steps, lr, lr_end, use_adam):
            """`steps` updates along -direction() with Adam (or SGD), lr cosine lr -> lr_end."""
            m1 = tf.zeros([self.n], f64)
            m2 = tf.zeros([self.n], f64)
            total = tf.cast(tf.maximum(steps, 1), f64)
            for i in tf.range(steps):
                d = direction()
                t = tf.cast(i, f64)
                rate = lr_end + 0.5 * (lr - lr_end) * (1.0 + tf.cos(np.pi * t / total))
                if use_adam:
                    m1 = 0.9 * m1 + 0.1 * d
                    m2 = 0.999 * m2 + 0.001 * d * d
                    mh = m1 / (1.0 - tf.pow(tf.constant(0.9, f64), t + 1.0))
                    vh = m2 / (1.0 - tf.pow(tf.constant(0.999, f64), t + 1.0))
                    add(-rate * mh / (tf.sqrt(vh) + 1e-12))
                else:
                    add(-rate * d)
            return mean_loss(xb, yb)

        use_adam = optimizer == "adam"
        lr0 = tf.constant(learning_rate, f64)

        @tf.function
        def train(steps):
            # the recipe's constant learning rate: lr_end = lr
            return adam_loop(lambda: grad()[1], steps, lr0, lr0, use_adam)

        @tf.function
        def gn(steps, lr):
            # d ||g||^2 / dw = 2 H g; cosine decay to 1% for a sharper end point
            return adam_loop(lambda: 2.0 * hv(grad()[1]), steps, lr, 0.01 * lr, True)

        @tf.function
        def measure():
            value, g = grad()
            h = tf.map_fn(hv, tf.eye(self.n, dtype=f64), parallel_iterations=8)
            h = 0.5 * (h + tf.transpose(h))
            # Eigen's solver in the graph: numpy's LAPACK here fights TF's threads (3-10x slower)
            return value, g, hv(g), h, tf.linalg.eigvalsh(h)

        @tf.function
        def losses_at(ws):
            w0 = hvp.flatten_tf(params)
            out = tf.TensorArray(f64, size=tf.shape(ws)[0])
            for i in tf.range(tf.shape(ws)[0]):
                assign(ws[i])
                out = out.write(i, mean_loss(xb, yb))
            assign(w0)
            return out.stack()

        self._train, self._gn, self._measure, self._losses_at = train, gn, measure, losses_at

    def set_weights(self, w):
        self.obj.set_flat(w)

    def get_weights(self):
        return self.obj.get_flat()

    def train(self, steps: int) -> float:
        import tensorflow as tf

        return float(self._train(tf.constant(steps)))

    def minimise_grad_norm(self, steps: int, lr: float) -> float:
        import tensorflow as tf

        return float(self._gn(tf.constant(steps), tf.constant(lr, tf.float64)))

    def measure(self):
        """loss, g, Hg, the exact (symmetrised) Hessian and its ascending eigenvalues."""
        value, g, hg, h, ev = self._measure()
        return (float(value), np.asarray(g, np.float64), np.asarray(hg, np.float64),
                np.asarray(h, np.float64), np.asarray(ev, np.float64))

    def losses_at(self, ws: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return np.asarray(self._losses_at(tf.constant(ws, tf.float64)), np.float64)


def problem(spec, args):
    """(x, y) of the full batch: a small generated sinc set, or the first N examples."""
    if spec.dataset == "sinc":
        ds = data.make_sinc(seed=args.seed, n_train=args.examples)
        return ds.x_train, ds.y_train, ds.source
    ds = training_runs.load(spec.dataset, args)
    return ds.x_train[: args.examples], ds.y_train[: args.examples], ds.source


def main(args) -> dict:
    spec = cli.check_model(args.model)
    n_params = zoo.parameter_count(args.model)
    if n_params > args.max_params:
        small = ", ".join(m for m in zoo.list_models() if zoo.parameter_count(m) <= args.max_params)
        raise cli_types.UsageError(
            f"{args.model} has {n_params:,} weights; the exact Hessian here is limited to "
            f"--max-params {args.max_params:,} (n x n matrix, n HVPs per point). Models that fit: "
            f"{small or 'none'}; or raise --max-params")
    if args.quick:
        args.runs = min(args.runs, 4)
        args.train_steps = min(args.train_steps, 200)
        args.gn_steps = min(args.gn_steps, 100)
        args.perturbations = min(args.perturbations, 100)
    seeds = cli.run_seeds(args, args.runs, "--runs")
    x, y, source = problem(spec, args)
    study = study_files.Study(NAME, args, measurement="float64", training_policy="float64",
                         data_source=source, parameters=n_params,
                         arithmetic="float64 throughout (training included); --precision unused",
                         optimizer=spec.recipe.optimizer, learning_rate=spec.recipe.learning_rate,
                         loss=spec.recipe.loss)
    import keras

    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    runner = Runner(zoo.create_model(args.model), spec.recipe.loss, x, y,
                    spec.recipe.optimizer, spec.recipe.learning_rate)
    rng = np.random.default_rng(args.seed)
    lo = max(1, args.train_steps // 20)
    steps_per_run = np.round(np.exp(rng.uniform(np.log(lo), np.log(args.train_steps),
                                                args.runs))).astype(int)
    runs, timings = [], []
    for r, seed in enumerate(seeds):
        t_run = time.perf_counter()
        keras.utils.set_random_seed(seed)
        runner.set_weights(hvp.flatten(zoo.create_model(args.model).trainable_variables))
        steps = int(steps_per_run[r])
        loss_trained = runner.train(steps)
        w_trained = runner.get_weights()
        runner.minimise_grad_norm(args.gn_steps, args.gn_lr)
        loss, g, hg, h, ev = runner.measure()
        counts = minimal_ratio(ev, args.eig_tol)
        lam_max = float(np.abs(ev).max())
        gnorm, hgnorm = float(np.linalg.norm(g)), float(np.linalg.norm(hg))
        kind = classify(gnorm, hgnorm, lam_max, args.grad_tol, args.flat_tol)
        w = runner.get_weights()
        deltas = args.perturb_scale * np.random.default_rng([args.seed, r]).standard_normal(
            (args.perturbations, runner.n))
        dl = runner.losses_at(w[None, :] + deltas) - loss
        curv = ((deltas @ h) * deltas).sum(1)  # d'Hd per draw
        quad = deltas @ g + 0.5 * curv
        run = {
            "seed": seed, "train_steps": steps, "loss_after_training": loss_trained,
            "weight_move_gn": float(np.linalg.norm(w - w_trained)),
            "loss": loss, "grad_norm": gnorm, "hg_norm": hgnorm,
            "hg_over_lambda_max_g": hgnorm / max(lam_max * gnorm, 1e-300),
            "kind": kind, "lambda_max": float(ev.max()), "lambda_min": float(ev.min()),
            **{k: counts[k] for k in ("positive", "negative", "near_zero", "tolerance")},
            "minimal_ratio": counts["ratio"], "minimal_ratio_nonzero": counts["ratio_nonzero"],
            "ratio_by_tolerance": [minimal_ratio(ev, t)["ratio"] for t in TOLERANCE_SWEEP],
            "ratio_nonzero_by_tolerance": [minimal_ratio(ev, t)["ratio_nonzero"]
                                           for t in TOLERANCE_SWEEP],
            # at roundoff level: structural null directions of the network on this data
            "numerically_zero": minimal_ratio(ev, 1e-12)["near_zero"],
            "proxy": float(np.mean(dl > 0)), "proxy_quadratic": float(np.mean(quad > 0)),
            "proxy_hessian_only": float(np.mean(curv > 0)),
            "eigenvalues": ev,
            "seconds": time.perf_counter() - t_run,
        }
        runs.append(run)
        timings.append(run["seconds"])
        study.progress(r + 1, args.runs,
                       f"seed {seed}: {steps} steps, loss {loss:.3g}, |g| {gnorm:.2g}, "
                       f"|Hg| {hgnorm:.2g} ({kind}), +{counts['positive']}/-{counts['negative']}"
                       f"/0:{counts['near_zero']} ratio {counts['ratio']:.3f}, "
                       f"proxy {run['proxy']:.2f}, {run['seconds']:.2f}s", phase="runs")
    total = time.perf_counter() - t0
    n = runner.n
    study.count("training_steps", int(steps_per_run.sum()))
    study.count("gradients", int(steps_per_run.sum()) + args.runs * (args.gn_steps + 1))
    study.count("hvps", args.runs * (args.gn_steps + 1 + n))
    study.count("loss_evaluations", args.runs * (args.perturbations + 1))
    study.log(f"{args.runs} runs in {total:.1f}s ({total / args.runs:.2f}s a run, the first "
              f"includes tracing {timings[0]:.1f}s)")
    results = _summary(args, runs, n, total, timings)
    _plots(study, args, runs, results)
    return study.finish(results, _claims(args, results))


def _summary(args, runs, n, total, timings) -> dict:
    col = {k: np.array([r[k] for r in runs]) for k in
           ("loss", "minimal_ratio", "minimal_ratio_nonzero", "proxy", "proxy_quadratic",
            "proxy_hessian_only", "grad_norm", "hg_norm", "numerically_zero")}
    kinds = {k: int(sum(r["kind"] == k for r in runs))
             for k in ("critical", "gradient_flat", "not_converged")}
    crit = col["grad_norm"] <= args.grad_tol

    return {
        "model": args.model, "parameters": n, "runs": runs,
        "tolerance_sweep": list(TOLERANCE_SWEEP),
        "mean_ratio_by_tolerance": np.mean([r["ratio_by_tolerance"] for r in runs], axis=0),
        "mean_ratio_nonzero_by_tolerance": np.mean([r["ratio_nonzero_by_tolerance"]
                                                    for r in runs], axis=0),
        "mean_numerically_zero": float(col["numerically_zero"].mean()),
        "kinds": kinds,
        "spearman_ratio_vs_loss": measures.correlation(col["loss"], col["minimal_ratio"]),
        "spearman_ratio_vs_loss_critical": measures.correlation(col["loss"][crit],
                                                              col["minimal_ratio"][crit]),
        "spearman_ratio_nonzero_vs_loss": measures.correlation(col["loss"],
                                                             col["minimal_ratio_nonzero"]),
        "pearson_proxy_vs_ratio": measures.correlation(col["proxy"], col["minimal_ratio"],
                                                     "pearson"),
        "pearson_proxy_vs_ratio_nonzero": measures.correlation(
            col["proxy"], col["minimal_ratio_nonzero"], "pearson"),
        "mean_minimal_ratio_nonzero": float(col["minimal_ratio_nonzero"].mean()),
        "mean_proxy_hessian_only": float(col["proxy_hessian_only"].mean()),
        "mean_abs_proxy_minus_quadratic": float(np.abs(col["proxy"]
                                                       - col["proxy_quadratic"]).mean()),
        "mean_minimal_ratio": float(col["minimal_ratio"].mean()),
        # ||Hg|| / (max|lambda| ||g||): ~1 if g lay along the top eigenvector, ~0 in H's kernel
        "median_hg_over_lambda_max_g": float(np.median([r["hg_over_lambda_max_g"]
                                                        for r in runs])),
        "mean_proxy": float(col["proxy"].mean()),
        "timing": {"total_seconds": total, "runs": len(runs),
                   "seconds_per_run_median": float(np.median(timings)),
                   "first_run_seconds": timings[0],
                   "projected_100_runs_seconds": timings[0] + 99 * float(
                       np.median(timings[1:] if len(timings) > 1 else timings))},
    }


def _claims(args, res) -> list[dict]:
    k = res["kinds"]
    return [
        {"report_figure": "report 1, Fig 14",
         "claim": "at points of ~zero gradient, the minimal ratio rises as the loss falls "
                  "(lower loss: closer to a minimum)",
         "measured": f"{args.model}, {len(res['runs'])} runs: Spearman(loss, minimal ratio) "
                     f"{measures.format_correlation(res['spearman_ratio_vs_loss'])} (negative = "
                     "the claim); mean "
                     f"minimal ratio {res['mean_minimal_ratio']:.3f} with |lambda| <= "
                     f"{args.eig_tol:g} max|lambda| counted as zero; {k['critical']} critical "
                     f"points (|g| <= {args.grad_tol:g}), {k['gradient_flat']} gradient-flat, "
                     f"{k['not_converged']} not converged (median ||Hg|| / (max|lambda| ||g||) "
                     f"{res['median_hg_over_lambda_max_g']:.2g}: g lies almost in H's kernel). "
                     f"Of {res['parameters']} eigenvalues "
                     f"{res['mean_numerically_zero']:.0f} (mean) are zero to roundoff "
                     f"(|lambda| <= 1e-12 max|lambda|): structural null directions that cap "
                     f"the fraction; positive / (positive + negative) outside the band: mean "
                     f"{res['mean_minimal_ratio_nonzero']:.3f}, Spearman with loss "
                     f"{measures.format_correlation(res['spearman_ratio_nonzero_vs_loss'])}"},
        {"report_figure": "report 1, Fig 14",
         "claim": "the perturbation proxy (fraction of random perturbations raising the loss) "
                  "measures the same thing",
         "measured": f"mean proxy {res['mean_proxy']:.3f} vs mean minimal ratio "
                     f"{res['mean_minimal_ratio']:.3f}; Pearson(proxy, ratio) "
                     f"{measures.format_correlation(res['pearson_proxy_vs_ratio'])}; the proxy "
                     "follows the quadratic "
                     f"model g.d + d'Hd/2 (mean |difference| "
                     f"{res['mean_abs_proxy_minus_quadratic']:.3f}); the sign of d'Hd alone is "
                     f"positive for {res['mean_proxy_hessian_only']:.3f} of draws: the proxy "
                     f"weighs curvature by eigenvalue size (and by |g| where g is not ~0), it "
                     f"does not count positive eigenvalues"},
    ]


def _plots(study, args, runs, res):
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    loss = np.array([r["loss"] for r in runs])
    ratio = np.array([r["minimal_ratio"] for r in runs])
    proxy = np.array([r["proxy"] for r in runs])
    quad = np.array([r["proxy_quadratic"] for r in runs])
    gn = np.array([r["grad_norm"] for r in runs])
    hg = np.array([r["hg_norm"] for r in runs])
    kinds = np.array([r["kind"] for r in runs])
    markers = {"critical": "o", "gradient_flat": "s", "not_converged": "x"}
    norm = LogNorm(vmin=max(gn.min(), 1e-300), vmax=max(gn.max(), gn.min() * 1.0001, 1e-300))

    ratio_nz = np.array([r["minimal_ratio_nonzero"] for r in runs])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), sharex=True)
    for ax, vals, label in ((axes[0], ratio, "minimal ratio: positive / all eigenvalues"),
                            (axes[1], ratio_nz, "positive / (positive + negative)"),
                            (axes[2], proxy, "proxy: fraction of perturbations raising loss")):
        sc = None
        for kind, mk in markers.items():
            sel = kinds == kind
            if sel.any():
                sc = ax.scatter(loss[sel], vals[sel], c=gn[sel], cmap="viridis", norm=norm,
                                marker=mk, s=28, label=f"{kind.replace('_', '-')} ({sel.sum()})")
        ax.set_xscale("log")
        ax.set_xlabel("loss at the point (MSE)" if "mse" in study.config["loss"] else "loss")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.colorbar(sc, ax=ax, label="gradient norm |g|")
    axes[0].set_title(f"{args.model}: minimal ratio vs loss ({len(runs)} runs)")
    axes[1].set_title(f"the zero band (|lambda| <= {args.eig_tol:g} max) left out")
    axes[2].set_title(f"perturbation proxy ({args.perturbations} draws, "
                      f"sigma {args.perturb_scale:g})")
    study.savefig(fig, "minimal_ratio_vs_loss.png",
                  "Report 1 Fig 14: left, fraction of positive Hessian eigenvalues (exact, "
                  f"float64; |lambda| <= {args.eig_tol:g} max|lambda| counted as zero) at the end "
                  "of gradient-norm minimisation, against the loss there, coloured by |g|, "
                  "marker = critical / gradient-flat / not converged; middle, positive / "
                  "(positive + negative), the zero band left out; right, the perturbation "
                  "proxy of public solutions at the same points")

    fig, ax = plt.subplots(figsize=(6.2, 5))
    ax.scatter(ratio, proxy, c=gn, cmap="viridis", norm=norm, s=26, label="measured proxy")
    ax.scatter(ratio, quad, facecolors="none", edgecolors="r", s=40,
               label="quadratic-model prediction g.d + d'Hd/2 > 0")
    ax.scatter(ratio_nz, proxy, marker="^", color="gray", s=22,
               label="proxy against positive / (positive + negative)")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="proxy = ratio")
    ax.set_xlabel("minimal ratio (exact eigenvalues; triangles: zero band left out)")
    ax.set_ylabel("perturbation proxy")
    ax.set_title("proxy vs exact (Pearson "
                 f"{measures.format_correlation(res['pearson_proxy_vs_ratio'])})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    study.savefig(fig, "proxy_vs_minimal_ratio.png",
                  "The two definitions at the same points: the perturbation proxy against the "
                  "exact minimal ratio (diagonal = agreement); red circles: the proxy predicted "
                  "by the local quadratic model from the exact g and H with the same draws")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for kind, mk in markers.items():
        sel = kinds == kind
        if sel.any():
            ax.scatter(gn[sel], hg[sel], marker=mk, s=26, label=f"{kind} ({sel.sum()})")
    ax.axvline(args.grad_tol, color="k", ls="--", lw=0.8, label=f"grad-tol {args.grad_tol:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|g| at the point")
    ax.set_ylabel("|Hg| at the point")
    ax.set_title("where gradient-norm minimisation ended")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    tol = np.array(res["tolerance_sweep"])
    per = np.array([r["ratio_by_tolerance"] for r in runs])
    plotting.band(ax, tol, per, "positive / all")
    plotting.band(ax, tol, np.array([r["ratio_nonzero_by_tolerance"] for r in runs]),
                "positive / (positive + negative)")
    ax.axvline(args.eig_tol, color="k", ls="--", lw=0.8, label=f"eig-tol {args.eig_tol:g}")
    ax.set_xscale("log")
    ax.set_xlabel("zero band: |lambda| <= tol x max|lambda|")
    ax.set_ylabel("fraction")
    ax.set_title("how much the count depends on the tolerance")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    study.savefig(fig, "gradient_flatness_and_tolerance.png",
                  "Left: |Hg| against |g| at every end point (small |Hg| with not-small |g| = "
                  "gradient-flat, Frye et al. 2021). Right: the minimal ratio against the "
                  "width of the zero band (mean, min-max and +-1 std over runs)")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
