"""The native data plane against the Python plane, in turns in one run (issue 26's targets that a
short run can check): softmax_regression x1 over gRPC, server CPU a request (the server and its
predictd child); one gRPC connection with 8 requests in flight, predictions/s and the cores the
server uses. With --v2, the Open Inference Protocol's ModelInfer instead (raw contents, as
tritonclient sends them): 1 row and 16 rows, sequential, server CPU a request. The load
generator is benchmarks/grpc_load.cc (C++, one thread).

    python -m benchmarks.native_plane [--base-path exported_models] [--seconds 4] [--rounds 3]
                                      [--v2]

Needs build/native/predictd (make native). Wrap in `flock -x /tmp/zoo-cpu.lock` on a shared
machine. Medians over the rounds; ratios native / python.
"""

from __future__ import annotations

import argparse
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
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native_plane", description=__doc__)
    p.add_argument("--base-path", type=Path, default=ROOT / "exported_models")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--v2", action="store_true",
                   help="measure v2 ModelInfer (1 and 16 rows, sequential) instead of Predict")
    args = p.parse_args(argv)
    print(machine())
    if not plane.built():
        raise SystemExit(f"{plane.BINARY} is not built: make native")
    binary, why = cxx_client()
    if binary is None:
        raise SystemExit(f"the C++ load generator cannot be built: {why}")
    x = np.zeros((1, 28, 28), np.float32)
    # (what, method, payload, requests in flight)
    if args.v2:
        cases = [(f"ModelInfer x{n}", MODEL_INFER,
                  v2_request_bytes("softmax_regression", np.zeros((n, 28, 28), np.float32)), 1)
                 for n in (1, 16)]
    else:
        cases = [("Predict x1", PREDICT, request_bytes("softmax_regression", x), c)
                 for c in (1, 8)]
    latest(args.base_path, "softmax_regression")
    figures = {(pl, i): [] for pl in PLANES for i in range(len(cases))}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "models"
        base.mkdir()
        (base / "softmax_regression").symlink_to(args.base_path.resolve() / "softmax_regression")
        for _ in range(args.rounds):
            for pl in PLANES:
                server = Server(base, "savedmodel", False, Path(tmp),
                                extra=("--data_plane", pl))
                try:
                    for i, (_, method, payload, clients) in enumerate(cases):
                        load_cxx(binary, server.address, payload, 1, 1.0, 1, method)  # warm up
                        figures[pl, i].append(
                            measure(server, binary, payload, clients, args.seconds, method))
                finally:
                    server.stop()
    med = {k: {f: statistics.median(r[f] for r in v)
               for f in ("server_cpu_us", "predictd_cpu_us", "rate", "cores", "p50_ms", "p99_ms")}
           for k, v in figures.items()}
    errors = {k: sum(sum(r["errors"].values()) for r in v) for k, v in figures.items()}
    print(f"softmax_regression, gRPC, one connection, {args.rounds} rounds of "
          f"{args.seconds:g} s, medians:")
    print(f"{'request':14} {'plane':8} {'in flight':>9} {'server CPU/req':>15} "
          f"{'of it predictd':>15} {'req/s':>8} {'cores':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6}")
    for (pl, i), m in sorted(med.items(), key=lambda kv: kv[0][1]):
        what, _, _, c = cases[i]
        print(f"{what:14} {pl:8} {c:9d} {m['server_cpu_us']:12.0f} us "
              f"{m['predictd_cpu_us']:12.0f} us {m['rate']:8.0f} "
              f"{m['cores']:6.2f} {m['p50_ms']:7.3f} {m['p99_ms']:7.3f} {errors[pl, i]:6d}")
    if args.v2:
        for i, (what, *_) in enumerate(cases):
            ratio = med["native", i]["server_cpu_us"] / med["python", i]["server_cpu_us"]
            print(f"server CPU a request, native / python, {what}: {ratio:.2f}")
        return 0
    ratio = med["native", 0]["server_cpu_us"] / med["python", 0]["server_cpu_us"]
    print(f"server CPU a request, native / python, x1 sequential: {ratio:.2f} "
          f"(target <= 0.4: {'met' if ratio <= 0.4 else 'not met'})")
    cores = med["native", 1]["cores"]
    print(f"cores the native server uses, one connection, 8 in flight: {cores:.2f} "
          f"(target >= 1.6: {'met' if cores >= 1.6 else 'not met'})")
    print(f"predictions/s, 8 in flight, native / python: "
          f"{med['native', 1]['rate'] / med['python', 1]['rate']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
