"""Training throughput of `training.train` against a plain `model.fit` script.

    python -m benchmarks.train_throughput [--models softmax_regression deep_cnn] [--repeats 3]

Both sides train the same model on the same MNIST slice with the same batch size and precision;
each side's first epoch (tracing) is not timed, evaluation is not timed. Prints samples/s medians
over the repeats and the ratio ours/plain (target >= 0.95). Then the precision question: deep_cnn
with `--precision auto` against plain float32 Keras (target >= 1.4x where auto finds fast reduced
precision), and every policy side by side, since `auto` is only right if it picks the fastest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median, table
from serving import quiet


def ours(name: str, policy: str, ds, batch: int, steps: int, epochs: int) -> float:
    from training import checkpoints, precision
    from training.config import resolve_config
    from training.train import train

    resolved = precision.choose(policy)
    config = resolve_config(name, precision_requested=policy, precision=resolved.policy,
                            precision_reason=resolved.reason, train_size=len(ds.x_train),
                            batch_size=batch, steps_per_epoch=steps, epochs=epochs,
                            test_limit=batch)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", ds, export_dir=None)
        history = checkpoints.read_state(Path(tmp) / "run")["history"]
    timed = history[1:]
    # Our per-epoch checkpoint is our overhead: it counts against us.
    seconds = sum(r["train_seconds"] + r["checkpoint_seconds"] for r in timed)
    return batch * steps * len(timed) / seconds


def plain(name: str, policy: str, ds, batch: int, steps: int, epochs: int,
          steps_per_execution: int = 1) -> float:
    """What a user would write without us: build, compile with the recipe, fit on arrays.
    With steps_per_execution equal to ours, the only difference left is our own machinery."""
    import keras

    import zoo

    keras.mixed_precision.set_global_policy(policy)
    r = zoo.get_spec(name).recipe
    model = zoo.create_model(name)
    opt = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[r.optimizer]
    metrics = ["accuracy"] if zoo.get_spec(name).task == "classification" else []
    model.compile(optimizer=opt(r.learning_rate), loss=r.loss, metrics=metrics,
                  steps_per_execution=steps_per_execution)
    n = batch * steps
    x, y = ds.x_train[:n].astype("float32"), ds.y_train[:n]
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Timer()])
    keras.mixed_precision.set_global_policy("float32")
    return batch * steps * len(times[1:]) / sum(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("--models", nargs="+", default=["softmax_regression", "mlp_128", "deep_cnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs + 1 untimed")
    args = p.parse_args()
    print(machine(), flush=True)

    from training import data, precision
    from training.modeling import STEPS_PER_EXECUTION

    ds = data.load_dataset("mnist")
    # One full pass per epoch for the small models, as their recipes train (the per-epoch
    # checkpoint is then weighed as in real use); deep_cnn is too slow for full passes here.
    setup = {"softmax_regression": (100, 600), "mlp_128": (128, 468), "deep_cnn": (128, 25)}
    rows = []
    for name in args.models:
        batch, steps = setup.get(name, (128, 50))
        spe = min(STEPS_PER_EXECUTION, steps)
        o, q, e = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all
            o.append(ours(name, "float32", ds, batch, steps, args.epochs))
            q.append(plain(name, "float32", ds, batch, steps, args.epochs))
            e.append(plain(name, "float32", ds, batch, steps, args.epochs, spe))
        rows.append((name, batch, f"{median(o):,.0f}", f"{median(e):,.0f}",
                     f"{median(o) / median(e):.2f}x", f"{median(q):,.0f}",
                     f"{median(o) / median(q):.2f}x"))
        print(rows[-1], flush=True)
    print("\nOurs (checkpoint time included) vs plain model.fit, float32. Equal settings = the "
          f"plain script also runs {STEPS_PER_EXECUTION} steps per call (target >= 0.95x)")
    print(table(rows, ("model", "batch", "ours/s", "plain equal/s", "ratio", "plain default/s",
                       "ratio")))

    if "deep_cnn" in args.models:
        auto = precision.choose("auto")
        prows = []
        baseline = median([plain("deep_cnn", "float32", ds, 128, 25, args.epochs)
                           for _ in range(args.repeats)])
        for policy in ("auto", "mixed_bfloat16", "mixed_float16"):
            label = f"auto -> {auto.policy}" if policy == "auto" else policy
            runs = 1 if policy.startswith("mixed") and policy != auto.policy else args.repeats
            s = median([ours("deep_cnn", policy, ds, 128, 25, args.epochs) for _ in range(runs)])
            prows.append((label, f"{s:,.0f}", f"{baseline:,.0f}", f"{s / baseline:.2f}x"))
            print(prows[-1], flush=True)
        print(f"\ndeep_cnn by precision vs plain float32 Keras ({auto.reason})")
        print(table(prows, ("ours with", "samples/s", "plain float32", "ratio")))


if __name__ == "__main__":
    main()
