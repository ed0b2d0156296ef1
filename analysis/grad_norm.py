"""Report 1, Figs 12-13: gradient norm and loss against iteration, per mini-batch step, for any
zoo model, with a band over seeds. By default the report's setting: plain gradient descent,
learning rate 0.05 (`--recipe` uses the model's own recipe instead).

    python -m analysis.grad_norm
    python -m analysis.grad_norm --model sinc_deep_50_10_4_tanh --steps 3000 --recipe
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from analysis import cli, measures, plotting, study_files, training_runs
from training import cli_types, data

NAME = "grad_norm"


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="mlp_128")
    g = p.add_argument_group("study")
    g.add_argument("--steps", type=cli_types.positive_int, default=1500,
                   help="(default: %(default)s)")
    g.add_argument("--seeds", type=cli_types.positive_int, default=3, help="(default: %(default)s)")
    g.add_argument("--recipe", action="store_true",
                   help="the model's recipe instead of the report's GD at lr 0.05")
    g.add_argument("--learning-rate", type=cli_types.positive_float, default=0.05,
                   help="(default: %(default)s)")
    return p


def run_steps(config, ds, steps: int, study=None, label=""):
    """A step-by-step training loop recording each mini-batch's loss and gradient norm before
    its update, measured in float32 whatever the policy: on the model itself when it trains in
    float32 (the same pass gives the update), else on a float32 copy holding the same weights
    (under mixed_float16 the training gradients are also loss-scaled)."""
    import keras
    import tensorflow as tf

    from training import modeling, precision

    precision.apply(config.precision)
    keras.utils.set_random_seed(config.seed)
    model = modeling.compile_model(config)
    probe = measures.measured(model)
    loss_fn = keras.losses.get(config.loss)
    opt = model.optimizer
    params, probe_params = model.trainable_variables, probe.trainable_variables

    def loss_and_grads(net, variables, x, y, scale=False):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, tf.cast(net(x, training=True), tf.float32)))
            scaled = opt.scale_loss(loss) if scale and hasattr(opt, "scale_loss") else loss
        return loss, tape.gradient(scaled, variables)

    @tf.function
    def step(x, y):
        if probe is model:
            loss, grads = loss_and_grads(model, params, x, y)
            update = grads
        else:
            for p, w in zip(probe_params, params):
                p.assign(w)
            loss, grads = loss_and_grads(probe, probe_params, x, y)
            update = loss_and_grads(model, params, x, y, scale=True)[1]
        opt.apply_gradients(zip(update, params))
        return loss, tf.linalg.global_norm(grads)

    it = iter(data.train_pipeline(ds, config.batch_size, config.seed, config.train_limit))
    losses, norms = np.zeros(steps), np.zeros(steps)
    for i in range(steps):
        x, y = next(it)
        loss, norm = step(x, y)
        losses[i], norms[i] = float(loss), float(norm)
        if study and (i + 1) % max(1, steps // 5) == 0:
            study.progress(i + 1, steps, f"{label} loss {losses[i]:.4g} |g| {norms[i]:.3g}",
                           phase=label)
    if study:
        study.count("training_steps", steps)
        # a float32 copy measures with a gradient of its own beside the training one
        study.count("gradients", steps if probe is model else 2 * steps)
    return model, losses, norms


def main(args) -> dict:
    spec = cli.check_model(args.model)
    if args.quick:
        args.steps = min(args.steps, 40)
        args.seeds = min(args.seeds, 2)
    seeds = cli.run_seeds(args, args.seeds)
    study = study_files.Study(NAME, args)
    ds = training_runs.load(spec.dataset, args)
    runs = []
    for seed in seeds:
        config = training_runs.train_config(args.model, args, seed=seed, steps=args.steps,
                                     dataset_size=len(ds.x_train))
        if not args.recipe:
            config = dataclasses.replace(config, optimizer="sgd", schedule="constant",
                                         learning_rate=args.learning_rate)
        _, losses, norms = run_steps(config, ds, args.steps, study, f"seed {seed}")
        runs.append({"seed": seed, "loss": losses, "grad_norm": norms})
    cfg = {"optimizer": config.optimizer, "learning_rate": config.learning_rate,
           "batch_size": config.batch_size, "schedule": config.schedule}
    _plots(study, args, runs, cfg)
    loss = np.array([r["loss"] for r in runs])
    norm = np.array([r["grad_norm"] for r in runs])
    tail = max(1, args.steps // 10)
    claims = [{"report_figure": "report 1, Figs 12-13",
               "claim": "gradient norm falls with the loss as training converges",
               "measured": f"{args.model}: mini-batch |g| first 10% {norm[:, :tail].mean():.3g} "
                           f"-> last 10% {norm[:, -tail:].mean():.3g}; loss "
                           f"{loss[:, :tail].mean():.3g} -> {loss[:, -tail:].mean():.3g} "
                           f"({len(runs)} seeds)"}]
    return study.finish({"optimizer": cfg, "runs": runs}, claims)


def _plots(study, args, runs, cfg):
    import matplotlib.pyplot as plt

    it = np.arange(1, args.steps + 1)
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for ax, key, label in ((axes[0], "grad_norm", "gradient norm"), (axes[1], "loss", "loss")):
        plotting.band(ax, it, np.array([r[key] for r in runs]), args.model, log=True)
        ax.set_yscale("log")
        ax.set_ylabel(f"mini-batch {label}")
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("iteration")
    axes[0].set_title(f"{args.model}: {cfg['optimizer']} lr {cfg['learning_rate']}, "
                      f"batch {cfg['batch_size']}")
    study.savefig(fig, "grad_norm_loss.png", "Report 1 Figs 12-13: mini-batch gradient norm and "
                  "loss per iteration; geometric mean and min-max over seeds")


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
