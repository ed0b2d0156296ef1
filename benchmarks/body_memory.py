"""The server's memory and health latency while big JSON bodies are decoded (issue 25, item
1): four concurrent 58 MB `:predict` bodies of images [N, 28, 28] (`--kind pixels`: the raw
0-255 pixels as float32, as the zoo's models take them, "12.0, " ~7 bytes a number; `floats`:
float32 in [0, 1) as json.dumps writes them, ~20 bytes), the server's RSS sampled every 10 ms
and `/v2/health/live` asked in a loop meanwhile. Baseline, in the same run: the same server with
big arrays forced through Python lists (json_body's list path, as before issue 25). The model
is ONNX ReduceMean (one number per image answered), so the answers cost nothing.

    python -m benchmarks.body_memory [--mb 58] [--bodies 4] [--rounds 3] [--kind pixels|floats]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, median, table
from benchmarks.serving_load import ROOT, free_port

LIST_PATH = ("import serving.transports.json_body as j; "
             "j.NumberArray.at = classmethod(lambda cls, raw, i: None); ")
SERVE = "import sys; from serving.server import main; sys.exit(main(sys.argv[1:]))"


def write_model(version_dir: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    version_dir.mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    graph = helper.make_graph([node], "mean", [x], [y], initializer=[axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              str(version_dir / "model.onnx"))


def body_of(mb: float, kind: str) -> bytes:
    rng = np.random.default_rng(0)
    if kind == "pixels":  # about 7 bytes a number: "123.0, "
        x = rng.integers(0, 256, (int(mb * 1e6 / (28 * 28 * 7)), 28, 28)).astype(np.float32)
    else:  # about 20: "0.6369616985321045, "
        x = rng.random((int(mb * 1e6 / (28 * 28 * 20)), 28, 28), dtype=np.float32)
    return json.dumps({"instances": x.tolist()}).encode()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def request(port: int, method: str, path: str, body: bytes | None = None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        c.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def one_round(base: Path, body: bytes, bodies: int, list_path: bool) -> dict:
    port = free_port()
    cmd = [sys.executable, "-c", (LIST_PATH if list_path else "") + SERVE,
           "--model_base_path", str(base), "--backend", "onnx", "--port", str(free_port()),
           "--rest_api_port", str(port), "--log_level", "WARNING",
           "--max_request_bytes", str(128 << 20)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin",
                                                "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        for _ in range(600):
            try:
                if request(port, "GET", "/v2/health/ready") == 200:
                    break
            except OSError:
                time.sleep(0.1)
        warm = json.dumps({"instances": [[[1] * 28] * 28]}).encode()
        assert request(port, "POST", "/v1/models/mean:predict", warm) == 200
        before = rss(proc.pid)
        done, peak, health, statuses = threading.Event(), [before], [], []

        def sample():
            while not done.is_set():
                peak.append(rss(proc.pid))
                time.sleep(0.01)

        def poll_health():
            while not done.is_set():
                started = time.perf_counter()
                request(port, "GET", "/v2/health/live")
                health.append(time.perf_counter() - started)
                time.sleep(0.01)

        def send():
            statuses.append(request(port, "POST", "/v1/models/mean:predict", body))

        helpers = [threading.Thread(target=f) for f in (sample, poll_health)]
        senders = [threading.Thread(target=send) for _ in range(bodies)]
        for t in helpers + senders:
            t.start()
        started = time.perf_counter()
        for t in senders:
            t.join()
        took = time.perf_counter() - started
        done.set()
        for t in helpers:
            t.join()
        return {"rss": max(peak) - before, "health_max": max(health),
                "health_p50": median(health), "took": took, "statuses": statuses}
    finally:
        proc.terminate()
        proc.wait(60)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=58)
    p.add_argument("--bodies", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kind", choices=("pixels", "floats"), default="pixels")
    args = p.parse_args(argv)
    print(machine())
    body = body_of(args.mb, args.kind)
    print(f"{args.bodies} concurrent bodies of {len(body) / 1e6:.1f} MB of {args.kind} "
          f"({len(body) / 1e6 * args.bodies:.0f} MB in all), {args.rounds} rounds, medians")
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp) / "mean" / "1")
        results = {}
        for name, list_path in (("lists (before)", True), ("numpy (now)", False)):
            rounds = [one_round(Path(tmp), body, args.bodies, list_path)
                      for _ in range(args.rounds)]
            assert all(s == 200 for r in rounds for s in r["statuses"]), rounds
            results[name] = {k: median([r[k] for r in rounds])
                             for k in ("rss", "health_max", "health_p50", "took")}
    total = len(body) * args.bodies
    rows = [(name, f"+{r['rss'] / 1e9:.2f} GB", f"{r['rss'] / total:.1f}x",
             f"{r['health_max']:.2f} s", f"{r['health_p50'] * 1e3:.0f} ms", f"{r['took']:.1f} s")
            for name, r in results.items()]
    print(table(rows, ("decoder", "RSS peak", "x body bytes", "health max", "health p50",
                       "all answered in")))
    before, now = results["lists (before)"], results["numpy (now)"]
    print(f"ratio now/before: RSS {now['rss'] / before['rss']:.2f}, health max "
          f"{now['health_max'] / before['health_max']:.2f}, "
          f"time {now['took'] / before['took']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
