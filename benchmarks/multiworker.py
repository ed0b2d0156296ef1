"""Multi-worker training: what two local workers give here, what N machines would give.

    python -m benchmarks.multiworker [--model deep_cnn] [--steps 30] [--allreduces 50]

1. Samples/s of `training.train MODEL` in one process (model.fit) and with `--workers 2` (two
   processes on this machine's cores, MultiWorkerMirroredStrategy), same global batch, seed,
   data and float32; the second epoch is timed (the first traces), evaluation is not.
2. The all-reduce of one step measured alone: two workers on 127.0.0.1 all-reduce tensors of
   the model's variable shapes (what the optimizer sums each step), median over --allreduces.
3. On paper, N machines on a 10 Gb/s network: a ring all-reduce sends 2(N-1)/N x the gradient
   bytes per worker each step. With the global batch fixed (split N ways) the step is
   communication-bound once that transfer outlasts 1/N of the one-process compute time;
   with the per-worker batch fixed (global batch N x larger) it adds to each step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median, table

LINK_BYTES_PER_S = 10e9 / 8  # 10 Gb/s
LINK_LATENCY_S = 50e-6  # per ring hop and message, a typical figure for a data-centre link
ROOT = Path(__file__).resolve().parents[1]


def train_rate(model: str, steps: int, workers: int, batch: int) -> float:
    """Samples/s of the second of two epochs of `steps` steps (train_seconds: no evaluation)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "training.train", model, "--epochs", "2",
               "--steps-per-epoch", str(steps), "--batch-size", str(batch), "--precision",
               "float32", "--test-limit", "500", "--run-dir", str(run), "--no-export"]
        if workers > 1:
            cmd += ["--workers", str(workers), "--peer-timeout", "300"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        history = json.loads((run / "state.json").read_text())["history"]
    return batch * steps / history[-1]["train_seconds"]


def allreduce_worker(model: str, repeats: int) -> None:
    """One of two workers (TF_CONFIG set by the parent): time all-reduces of the model's
    variable shapes, print the median seconds as JSON (worker 0 only)."""
    import tensorflow as tf

    from training import multiworker

    worker = multiworker.Worker.from_env()
    strategy = multiworker.connect(worker, 120)
    import zoo

    shapes = [v.shape for v in zoo.create_model(model).trainable_variables]
    grads = [tf.ones(s) for s in shapes]

    @tf.function
    def reduce():
        ctx = tf.distribute.get_replica_context
        return strategy.run(lambda: ctx().all_reduce("sum", grads))

    reduce()  # trace, set up the ring
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = reduce()
        tf.nest.map_structure(lambda t: t.numpy(), out)
        times.append(time.perf_counter() - start)
    if worker.is_chief:
        print(json.dumps({"seconds": median(times), "tensors": len(shapes)}), flush=True)


def allreduce_seconds(model: str, repeats: int) -> tuple[float, int]:
    from training import launcher

    addresses = [f"127.0.0.1:{p}" for p in launcher.free_ports(2)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.multiworker", "--model", model, "--allreduces",
         str(repeats), "--allreduce-worker"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CONFIG=launcher.tf_config(addresses, i)))
        for i in range(2)]
    try:
        out = procs[0].communicate(timeout=600)[0]
        procs[1].wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], result["tensors"]


def ring_seconds(n: int, nbytes: float) -> float:
    """Ring all-reduce over n machines: 2(n-1)/n x bytes sent per worker in 2(n-1) hops, each
    paying the link latency once (the gradients' collectives run concurrently)."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / LINK_BYTES_PER_S + 2 * (n - 1) * LINK_LATENCY_S


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multiworker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deep_cnn")
    p.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--allreduces", type=int, default=50)
    p.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.allreduce_worker:
        return allreduce_worker(args.model, args.allreduces)

    import zoo

    batch = args.batch_size or zoo.get_spec(args.model).recipe.batch_size
    params = zoo.parameter_count(args.model)
    nbytes = 4 * params  # float32 gradients
    print(machine(), flush=True)
    print(f"{args.model}: {params:,} parameters = {nbytes / 1e6:.1f} MB of float32 gradients "
          f"a step; global batch {batch}, float32\n")

    one = train_rate(args.model, args.steps, 1, batch)
    two = train_rate(args.model, args.steps, 2, batch)
    reduce_s, tensors = allreduce_seconds(args.model, args.allreduces)
    step1 = batch / one
    print(table([("1 process (model.fit)", f"{one:,.0f}", f"{1e3 * step1:.0f}", "1.00x"),
                 ("2 workers, this machine", f"{two:,.0f}", f"{1e3 * batch / two:.0f}",
                  f"{two / one:.2f}x")],
                ("run", "samples/s", "ms/step", "ratio")))
    print(f"\nall-reduce of one step's gradients ({tensors} tensors), 2 workers on loopback: "
          f"{1e3 * reduce_s:.1f} ms median of {args.allreduces} "
          f"({100 * reduce_s * two / batch:.0f}% of a 2-worker step)")

    print(f"\nOn paper: N machines like this one's {os.cpu_count()} cores, 10 Gb/s links "
          f"({1e6 * LINK_LATENCY_S:.0f} us a hop), compute {1e3 * step1:.0f} ms a step of "
          f"{batch} (measured above), no overlap of communication and compute:")
    rows = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        comm = ring_seconds(n, nbytes)
        strong = step1 / n + comm  # global batch fixed, split n ways
        weak = step1 + comm  # per-worker batch fixed
        rows.append((n, f"{1e3 * comm:.1f}", f"{1e3 * step1 / n:.1f}",
                     "yes" if comm > step1 / n else "no", f"{batch / strong:,.0f}",
                     f"{step1 / strong:.1f}x", f"{n * batch / weak:,.0f}",
                     f"{n * step1 / weak:.1f}x"))
    print(table(rows, ("N", "ring ms", "compute ms (batch/N)", "comm-bound",
                       "samples/s fixed global", "speed-up", "samples/s fixed per-worker",
                       "speed-up")))


if __name__ == "__main__":
    main()
