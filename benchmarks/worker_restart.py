"""What a kill -9 of one `--workers` worker costs under load (docs/ARCHITECTURE.md, "Serving",
Workers): Predicts that failed and over how long, and the time until the supervisor has the
worker serving again.

    python -m benchmarks.worker_restart --base-path exported_models --clients 4 --kills 3

Starts `python -m serving.server --workers 2 --backend onnx` on free loopback ports; each client
is a thread with its own connection sending Predicts in a loop; each kill hits worker 1 and waits
for the supervisor's "is back: serving" line (its private port says SERVING).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks.common import machine, median
from serving.clients import readiness
from serving.runtime import tensors

BACK = re.compile(r"worker 1 \(pid (\d+)\) is back: serving")
PIDS = re.compile(r"2 workers \(pids (\d+), (\d+)\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-path", required=True, help="holds softmax_regression/1")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--kills", type=int, default=3)
    a = p.parse_args()
    port, rest = free_port(), free_port()
    log = Path(tempfile.mkstemp(prefix="worker-restart-", suffix=".log")[1])
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--model_base_path",
             str(Path(a.base_path) / "softmax_regression"), "--model_name",
             "softmax_regression", "--backend", "onnx", "--workers", "2", "--port", str(port),
             "--rest_api_port", str(rest), "--max_worker_restarts", str(a.kills)],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert readiness.wait_serving(f"127.0.0.1:{port}", 300, lambda: server.poll() is None)
        victim = int(wait(lambda: PIDS.search(log.read_text()), 60)[2])
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "softmax_regression"
        tensors.to_proto(np.zeros((1, 28, 28), np.float32), request.inputs["images"])
        results: list[tuple[float, str]] = []
        done = threading.Event()

        def load(i: int) -> None:
            options = [("grpc.use_local_subchannel_pool", 1), ("bench.connection", i)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not done.is_set():
                    try:
                        stub.Predict(request, timeout=30)
                        results.append((time.monotonic(), "OK"))
                    except grpc.RpcError as e:
                        results.append((time.monotonic(), f"{e.code().name}: {e.details()}"))

        clients = [threading.Thread(target=load, args=(i,)) for i in range(a.clients)]
        for t in clients:
            t.start()
        rows = []
        try:
            time.sleep(2)
            for k in range(a.kills):
                seen = len(BACK.findall(log.read_text()))
                start = len(results)
                killed = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                victim = int(wait(lambda seen=seen: len(BACK.findall(log.read_text())) > seen
                                  and BACK.findall(log.read_text())[-1], 300))
                back = time.monotonic() - killed
                time.sleep(2)
                window = results[start:]
                failed = [(t, c) for t, c in window if c != "OK"]
                span = failed[-1][0] - failed[0][0] if failed else 0.0
                kinds = sorted({c for _, c in failed})
                rows.append((len(failed), len(window), span, back))
                print(f"kill {k + 1}: {len(failed)} of {len(window)} Predicts failed within "
                      f"{span:.3f} s; worker 1 serving again after {back:.1f} s; {kinds[:3]}",
                      flush=True)
        finally:
            done.set()
            for t in clients:
                t.join(60)
        print(f"{machine()}; {a.clients} clients, {a.kills} kills: median failed "
              f"{median([r[0] for r in rows]):g}, median failure span "
              f"{median([r[2] for r in rows]):.3f} s, median time to serving again "
              f"{median([r[3] for r in rows]):.1f} s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
        log.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
