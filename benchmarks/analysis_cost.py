"""Cost of the curvature code on deep_cnn (3.3M parameters), measured in one run:
HVP time / gradient time on the same batch (both methods), and the top eigenvalue on 1,000
images by Lanczos, timed. Prints ratios and medians.

    python -m benchmarks.analysis_cost [--examples 1000] [--repeats 3] [--skip-top]
    python -m benchmarks.analysis_cost --minimal-ratio [--mr-runs 10]   # analysis.minimal_ratio
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.common import machine
from serving import quiet


def median_time(fn, repeats):
    fn()  # trace / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def minimal_ratio_timing(runs: int = 10, model: str = "sinc_deep_50_10_4_tanh",
                         target: float = 300.0) -> dict:
    """analysis.minimal_ratio at its defaults with `runs` runs (a report in a temporary
    directory): measured time, and 100 runs projected as first run (with tracing) + 99 x the
    median of the others, against the 100-runs-in-5-minutes target."""
    import tempfile

    from analysis import minimal_ratio

    with tempfile.TemporaryDirectory() as out:
        args = minimal_ratio.build_parser().parse_args(
            ["--model", model, "--runs", str(runs), "--out", out])
        t = time.perf_counter()
        doc = minimal_ratio.main(args)["doc"]
        wall = time.perf_counter() - t
    timing = doc["results"]["timing"]
    projected = timing["total_seconds"] if runs >= 100 else timing["projected_100_runs_seconds"]
    kind = "measured" if runs >= 100 else f"projected from {runs} runs"
    print(f"minimal_ratio {model}: {runs} runs in {timing['total_seconds']:.1f} s "
          f"(study wall {wall:.1f} s with plots); first run {timing['first_run_seconds']:.1f} s "
          f"(tracing), median {timing['seconds_per_run_median']:.2f} s/run")
    print(f"  100 runs: {projected:.0f} s ({kind}); target {target:.0f} s: "
          f"{projected / target:.2f}x the target")
    return {"runs": runs, "projected_100": projected, "kind": kind}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.analysis_cost")
    quiet.add_verbose_flag(p)
    p.add_argument("--model", default="deep_cnn")
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-top", action="store_true")
    p.add_argument("--minimal-ratio", action="store_true",
                   help="time analysis.minimal_ratio instead (100 runs, or projected)")
    p.add_argument("--mr-runs", type=int, default=10,
                   help="minimal_ratio runs to time; < 100 projects to 100 (default: 10)")
    args = p.parse_args(argv)
    print(machine(), flush=True)
    if args.minimal_ratio:
        minimal_ratio_timing(args.mr_runs)
        return 0

    import keras

    import zoo
    from analysis import hvp
    from training import data

    ds = data.load_dataset("mnist")
    keras.utils.set_random_seed(0)
    model = zoo.create_model(args.model)
    x, y = ds.x_train[: args.examples], ds.y_train[: args.examples]
    loss = zoo.get_spec(args.model).recipe.loss
    v = np.random.default_rng(0).standard_normal(model.count_params())
    print(f"{args.model}: {model.count_params():,} parameters, {args.examples} images, float32")
    results = {}
    for method in hvp.METHODS:
        obj = hvp.Objective(model, loss, x, y, dtype="float32", method=method)
        g = median_time(obj.gradient, args.repeats)
        h = median_time(lambda obj=obj: obj.hvp(v), args.repeats)
        results[method] = h / g
        print(f"  {method:22s} gradient {g:.3f} s  HVP {h:.3f} s  HVP/gradient {h / g:.2f}x "
              f"(median of {args.repeats})")
    if not args.skip_top:
        obj = hvp.Objective(model, loss, x, y, dtype="float32", method="double_backprop")
        obj.hvp(v)  # trace outside the timing
        t = time.perf_counter()
        top = hvp.lanczos_top(obj.hvp, obj.n, k=1, steps=30, rtol=1e-3,
                              store_dtype=np.float32)
        dt = time.perf_counter() - t
        print(f"  top eigenvalue {top['eigenvalues'][0]:.5g} (residual {top['residuals'][0]:.2g})"
              f" in {dt:.1f} s, {top['steps']} HVPs; target <= 60 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
