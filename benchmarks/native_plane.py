"""The native data plane against the Python plane, in turns in one run (issue 26's targets):
softmax_regression x1 over gRPC, server CPU a request (the server and its predictd child); one
gRPC connection with 8 requests in flight, predictions/s and the cores the server uses; 16
clients over 8 connections, native against the Python plane's best of --workers 1 and 2; then
--long-run seconds of the native plane at 16 clients (errors, p99 against p50). The load
generator is benchmarks/grpc_load.cc (C++, one thread). deep_cnn's batching target is
benchmarks/serving_load.py's (--data_plane native). With --v2, only the Open Inference
Protocol's ModelInfer (raw contents, as tritonclient sends them): 1 row and 16 rows,
sequential, server CPU a request, native against python.

    python -m benchmarks.native_plane [--base-path exported_models] [--seconds 4] [--rounds 3]
        [--long-run 60] [--v2]

Needs build/native/predictd (make native). Wrap in `flock -x /tmp/zoo-cpu.lock` on a shared
machine. Medians over the rounds; ratios native / python.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine
from benchmarks.serving_load import (
    MODEL_INFER,
    PREDICT,
    ROOT,
    Server,
    cxx_client,
    latest,
    load_cxx,
    request_bytes,
    tree_cpu_seconds,
    v2_request_bytes,
)
from serving.native import plane

PLANES = ("python", "native")


def predictd_cpu_seconds(server: Server) -> float:
    """CPU time of the server's predictd child so far (0 for the Python plane)."""
    pid = plane.predictd_of(server.proc.pid)
    return tree_cpu_seconds(pid) if pid else 0.0


def measure(server: Server, binary: Path, payload: bytes, clients: int, seconds: float,
            method: str = PREDICT) -> dict:
    before, native = server.cpu_seconds(), predictd_cpu_seconds(server)
    r = load_cxx(binary, server.address, payload, clients, seconds, channels=1, method=method)
    n = max(r["requests"], 1)
    r["server_cpu_us"] = (server.cpu_seconds() - before) / n * 1e6
    r["predictd_cpu_us"] = (predictd_cpu_seconds(server) - native) / n * 1e6
    r["cores"] = (server.cpu_seconds() - before) / seconds
    calls = r["requests"] + sum(r["errors"].values())  # summary() gives the client's CPU a call
    r["client_cores"] = r["client_cpu_us"] * calls / 1e6 / seconds  # the same 2 cores: the bound
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native_plane", description=__doc__)
    p.add_argument("--base-path", type=Path, default=ROOT / "exported_models")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--long-run", type=float, default=60.0,
                   help="seconds of the native plane at 16 clients (0: skip)")
    p.add_argument("--v2", action="store_true",
                   help="only v2 ModelInfer, 1 and 16 rows, sequential: server CPU a request")
    args = p.parse_args(argv)
    print(machine())
    if not plane.built():
        raise SystemExit(f"{plane.BINARY} is not built: make native")
    binary, why = cxx_client()
    if binary is None:
        raise SystemExit(f"the C++ load generator cannot be built: {why}")
    latest(args.base_path, "softmax_regression")
    if args.v2:
        return v2(binary, args)
    x = np.zeros((1, 28, 28), np.float32)
    payload = request_bytes("softmax_regression", x)
    figures = {(pl, c): [] for pl in PLANES for c in (1, 8)}
    wide = {cfg: [] for cfg in WIDE}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "models"
        base.mkdir()
        (base / "softmax_regression").symlink_to(args.base_path.resolve() / "softmax_regression")
        for _ in range(args.rounds):
            for pl, workers in WIDE:
                server = Server(base, "savedmodel", False, Path(tmp), workers,
                                extra=("--data_plane", pl))
                try:
                    load_cxx(binary, server.address, payload, 16, 1.0, WIDE_CHANNELS)
                    wide[pl, workers].append(load_cxx(binary, server.address, payload, 16,
                                                      args.seconds, WIDE_CHANNELS))
                finally:
                    server.stop()
            for pl in PLANES:
                server = Server(base, "savedmodel", False, Path(tmp),
                                extra=("--data_plane", pl))
                try:
                    load_cxx(binary, server.address, payload, 1, 1.0, 1)  # warm up
                    for clients in (1, 8):
                        figures[pl, clients].append(
                            measure(server, binary, payload, clients, args.seconds))
                finally:
                    server.stop()
    med = {k: {f: statistics.median(r[f] for r in v)
               for f in ("server_cpu_us", "predictd_cpu_us", "rate", "cores", "client_cores",
                         "p50_ms", "p99_ms")}
           for k, v in figures.items()}
    errors = {k: sum(sum(r["errors"].values()) for r in v) for k, v in figures.items()}
    print(f"softmax_regression x1, gRPC, one connection, {args.rounds} rounds of "
          f"{args.seconds:g} s, medians:")
    print(f"{'plane':8} {'in flight':>9} {'server CPU/req':>15} {'of it predictd':>15} "
          f"{'pred/s':>8} {'cores':>6} {'client':>6} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for (pl, c), m in med.items():
        print(f"{pl:8} {c:9d} {m['server_cpu_us']:12.0f} us {m['predictd_cpu_us']:12.0f} us "
              f"{m['rate']:8.0f} "
              f"{m['cores']:6.2f} {m['client_cores']:6.2f} {m['p50_ms']:7.3f} {m['p99_ms']:7.3f} "
              f"{errors[pl, c]:6d}")
    ratio = med["native", 1]["server_cpu_us"] / med["python", 1]["server_cpu_us"]
    print(f"server CPU a request, native / python, x1 sequential: {ratio:.2f} "
          f"(target <= 0.4: {'met' if ratio <= 0.4 else 'not met'})")
    cores = med["native", 8]["cores"]
    print(f"cores the native server uses, one connection, 8 in flight: {cores:.2f} "
          f"(target >= 1.6: {'met' if cores >= 1.6 else 'not met'}; the load generator used "
          f"{med['native', 8]['client_cores']:.2f} of the same {os.cpu_count()})")
    print(f"predictions/s, 8 in flight, native / python: "
          f"{med['native', 8]['rate'] / med['python', 8]['rate']:.2f}")
    rates = {cfg: statistics.median(r["rate"] for r in v) for cfg, v in wide.items()}
    print(f"\nsoftmax_regression x16 over {WIDE_CHANNELS} connections, medians of "
          f"{args.rounds} rounds:")
    for (pl, workers), rate in rates.items():
        print(f"  {pl:7} --workers {workers}: {rate:8,.0f} pred/s")
    best = max(rate for (pl, _), rate in rates.items() if pl == "python")
    ratio = rates["native", 1] / best
    print(f"native / the Python plane's best: {ratio:.2f} "
          f"(target >= 2: {'met' if ratio >= 2 else 'not met'})")
    if args.long_run > 0:
        long_run(binary, args.base_path, payload, args.long_run)
    return 0


def v2(binary: Path, args) -> int:
    """ModelInfer of 1 and 16 rows, one at a time, on each plane in turns."""
    rows = (1, 16)
    payloads = {n: v2_request_bytes("softmax_regression", np.zeros((n, 28, 28), np.float32))
                for n in rows}
    figures = {(pl, n): [] for n in rows for pl in PLANES}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "models"
        base.mkdir()
        (base / "softmax_regression").symlink_to(args.base_path.resolve() / "softmax_regression")
        for _ in range(args.rounds):
            for pl in PLANES:
                server = Server(base, "savedmodel", False, Path(tmp),
                                extra=("--data_plane", pl))
                try:
                    for n in rows:
                        load_cxx(binary, server.address, payloads[n], 1, 1.0, 1, MODEL_INFER)
                        figures[pl, n].append(measure(server, binary, payloads[n], 1,
                                                      args.seconds, MODEL_INFER))
                finally:
                    server.stop()
    print(f"softmax_regression, v2 ModelInfer over gRPC (raw contents), one at a time, "
          f"{args.rounds} rounds of {args.seconds:g} s, medians:")
    print(f"{'rows':>4} {'plane':8} {'server CPU/req':>15} {'of it predictd':>15} {'req/s':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    med = {}
    for (pl, n), v in figures.items():
        m = med[pl, n] = {f: statistics.median(r[f] for r in v)
                          for f in ("server_cpu_us", "predictd_cpu_us", "rate", "p50_ms",
                                    "p99_ms")}
        print(f"{n:4d} {pl:8} {m['server_cpu_us']:12.0f} us {m['predictd_cpu_us']:12.0f} us "
              f"{m['rate']:8.0f} {m['p50_ms']:7.3f} {m['p99_ms']:7.3f} "
              f"{sum(sum(r['errors'].values()) for r in v):6d}")
    for n in rows:
        print(f"server CPU a request, native / python, ModelInfer x{n}: "
              f"{med['native', n]['server_cpu_us'] / med['python', n]['server_cpu_us']:.2f}")
    return 0


WIDE = (("python", 1), ("python", 2), ("native", 1))
WIDE_CHANNELS = 8


def long_run(binary: Path, models: Path, payload: bytes, seconds: float) -> None:
    """The native plane at 16 clients for `seconds`: no errors, p99 within 3x p50."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "models"
        base.mkdir()
        (base / "softmax_regression").symlink_to(models.resolve() / "softmax_regression")
        server = Server(base, "savedmodel", False, Path(tmp), extra=("--data_plane", "native"))
        try:
            load_cxx(binary, server.address, payload, 16, 1.0, WIDE_CHANNELS)
            r = load_cxx(binary, server.address, payload, 16, seconds, WIDE_CHANNELS)
        finally:
            server.stop()
    errors = sum(r["errors"].values())
    spread = r["p99_ms"] / r["p50_ms"]
    met = errors == 0 and spread <= 3
    print(f"\nnative, softmax_regression x16 for {seconds:g} s: {r['requests']:,} requests, "
          f"{r['rate']:,.0f} pred/s, errors {errors} {dict(r['errors']) or ''}, p50 "
          f"{r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms (p99/p50 {spread:.2f}; target: no "
          f"errors and <= 3: {'met' if met else 'not met'})")


if __name__ == "__main__":
    raise SystemExit(main())
