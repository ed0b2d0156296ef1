"""Training on an image folder (streamed from its disk cache) against the same images as an
in-memory `.npz`: steps/s and peak RSS, for two folder sizes.

    python -m benchmarks.folder_throughput [--sizes 2000 16000] [--model mlp_128] [--repeats 3]

The folder holds the first N MNIST training digits as PNGs, one subfolder per digit; the `.npz`
holds exactly the images and split that the folder gives (seed 0), so both sides train the
same model on the same examples with the same batch size, float32, through `training.train`.
Each run is a process of its own, so its peak RSS (`ru_maxrss`) is its own; the folder's cache
is written once before (that decoding pass is timed apart) and only read by the runs. The first
epoch (tracing) is not timed; checkpoints count, as in real use. Prints medians over the
repeats (interleaved), the ratio folder/npz (target >= 0.8x), and whether the folder's peak RSS
grows from the smaller size to the larger (it should not; the `.npz` side's does).
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
from serving import quiet

STEPS, EPOCHS, BATCH = 60, 4, 128  # 3 timed epochs of 60 steps, after one untimed


def input_shape(model: str) -> tuple[int, ...]:
    import zoo

    return zoo.get_spec(model).inputs.shape


def train_once(source: str, model: str) -> dict:
    """One run in this process: {"samples_per_s": ...} (timed epochs only)."""
    from training import checkpoints, data_paths
    from training.config import resolve_config
    from training.train import train

    ds = data_paths.load_dataset(source, task="classification", input_shape=input_shape(model))
    config = resolve_config(model, precision_requested="float32", precision="float32",
                            precision_reason="benchmark", train_size=len(ds.x_train),
                            dataset=source, num_classes=ds.num_classes, batch_size=BATCH,
                            steps_per_epoch=STEPS, epochs=EPOCHS, test_limit=BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", ds, export_dir=None)
        history = checkpoints.read_state(Path(tmp) / "run")["history"]
    timed = history[1:]
    seconds = sum(r["train_seconds"] + r["checkpoint_seconds"] for r in timed)
    return {"samples_per_s": BATCH * STEPS * len(timed) / seconds, "peak_rss_mib": peak_rss()}


def peak_rss() -> float:
    """This process's peak RSS in MiB: VmHWM, the high-water mark of its own memory map. (The
    ru_maxrss that wait4 reports for a child counts the parent's RSS at fork as well.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(source: str, model: str, env: dict) -> tuple[float, float]:
    """(samples/s, peak RSS in MiB) of one run in a fresh process."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.folder_throughput", "--child",
                           source, "--model", model], env=env, stdout=subprocess.PIPE,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the run on {source} failed (exit {done.returncode})")
    result = json.loads(done.stdout.splitlines()[-1])
    return result["samples_per_s"], result["peak_rss_mib"]


def write_sources(tmp: Path, mnist, n: int, model: str) -> tuple[Path, Path, float]:
    """(folder, npz, seconds of the folder's first, decoding, load)."""
    import numpy as np
    from PIL import Image

    from training import data_paths

    folder = tmp / f"digits{n}"
    for i in range(n):
        d = folder / str(mnist.y_train[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mnist.x_train[i]).save(d / f"{i:05d}.png")
    start = time.perf_counter()
    ds = data_paths.load_dataset(str(folder), task="classification",
                                 input_shape=input_shape(model))
    decode_seconds = time.perf_counter() - start
    npz = tmp / f"digits{n}.npz"
    np.savez(npz, x_train=np.asarray(ds.x_train), y_train=ds.y_train,
             x_test=np.asarray(ds.x_test), y_test=ds.y_test)
    return folder, npz, decode_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("--sizes", type=int, nargs=2, default=[2000, 16000])
    p.add_argument("--model", default="mlp_128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(train_once(args.child, args.model)))
        return
    print(machine(), flush=True)
    from training import data

    mnist = data.load_dataset("mnist")  # from the usual cache, before it is moved below
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The folders' caches go here, not into the user's project cache.
        env = dict(os.environ, ZOO_CACHE_DIR=str(tmp / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
        os.environ["ZOO_CACHE_DIR"] = env["ZOO_CACHE_DIR"]
        rows, rss = [], {}
        for n in args.sizes:
            folder, npz, decode_seconds = write_sources(tmp, mnist, n, args.model)
            runs = {"folder": [], "npz": []}
            for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both
                for side, source in (("folder", folder), ("npz", npz)):
                    runs[side].append(child(str(source), args.model, env))
                    print(n, side, runs[side][-1], flush=True)
            speed = {s: median([r[0] for r in v]) for s, v in runs.items()}
            rss[n] = {s: median([r[1] for r in v]) for s, v in runs.items()}
            rows.append((n, f"{decode_seconds:.1f}", f"{speed['folder']:,.0f}",
                         f"{speed['npz']:,.0f}", f"{speed['folder'] / speed['npz']:.2f}x",
                         f"{rss[n]['folder']:,.0f}", f"{rss[n]['npz']:,.0f}"))
    small, large = args.sizes
    print(f"\n{args.model}, batch {BATCH}, float32, {STEPS} steps x {EPOCHS - 1} timed epochs; "
          f"median of {args.repeats}; folder/npz target >= 0.8x")
    print(table(rows, ("images", "first decode s", "folder samples/s", "npz samples/s",
                       "ratio", "folder peak RSS MiB", "npz peak RSS MiB")))
    for side in ("folder", "npz"):
        print(f"peak RSS {side}: {rss[small][side]:,.0f} MiB at {small:,} images, "
              f"{rss[large][side]:,.0f} MiB at {large:,} "
              f"({rss[large][side] - rss[small][side]:+,.0f} MiB)")


if __name__ == "__main__":
    main()
