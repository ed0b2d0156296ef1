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

from benchmarks.common import median, table


def ours(name: str, policy: str, ds, batch: int, steps: int, epochs: int) -> float:
    from training import checkpoints, precision
    from training.config import resolve_config
    from training.train import train

    resolved = precision.resolve(policy, precision.detect_hardware())
    config = resolve_config(name, precision_requested=policy, precision=resolved.policy,
                            precision_reason=resolved.reason, train_size=len(ds.x_train),
                            batch_size=batch, steps_per_epoch=steps, epochs=epochs,
                            test_limit=batch)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", ds, export_dir=None)
        history = checkpoints.read_state(Path(tmp) / "run")["history"]
    timed = history[1:]
    return batch * steps * len(timed) / sum(r["train_seconds"] for r in timed)


def plain(name: str, policy: str, ds, batch: int, steps: int, epochs: int) -> float:
    """What a user would write without us: build, compile with the recipe, fit on arrays."""
    import keras

    import zoo

    keras.mixed_precision.set_global_policy(policy)
    r = zoo.get_spec(name).recipe
    model = zoo.create_model(name)
    opt = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[r.optimizer]
    model.compile(optimizer=opt(r.learning_rate), loss=r.loss)
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
    p.add_argument("--models", nargs="+", default=["softmax_regression", "mlp_128", "deep_cnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs + 1 untimed")
    args = p.parse_args()

    from training import data, precision

    ds = data.load_dataset("mnist")
    setup = {"softmax_regression": (100, 200), "mlp_128": (128, 150), "deep_cnn": (128, 25)}
    rows = []
    for name in args.models:
        batch, steps = setup.get(name, (128, 50))
        o, q = [], []
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
            o.append(ours(name, "float32", ds, batch, steps, args.epochs))
            q.append(plain(name, "float32", ds, batch, steps, args.epochs))
        rows.append((name, "float32", batch, f"{median(o):,.0f}", f"{median(q):,.0f}",
                     f"{median(o) / median(q):.2f}x"))
        print(rows[-1], flush=True)
    print("\nOurs vs plain model.fit at equal precision (target >= 0.95x)")
    print(table(rows, ("model", "precision", "batch", "ours samples/s", "plain samples/s",
                       "ratio")))

    if "deep_cnn" in args.models:
        auto = precision.resolve("auto", precision.detect_hardware())
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
