"""Load test of serving/ over loopback, next to the same model called in-process (the limit).

    python -m benchmarks.serving_load [--base-path exported_models] [--seconds 5] [--long-run 60]
        [--workers 1 2] [--client auto|cxx|python] [--access-log-rounds 5]
        [--data_plane python native] [--batching_parameters_file FILE]

For every backend (savedmodel, onnx) x batching (off, on) x --workers, a server subprocess is
started on 127.0.0.1; for softmax_regression and deep_cnn, 1 and 16 concurrent clients send a
prebuilt one-image PredictRequest for --seconds; at 16 clients the same image is also sent as a
v2 ModelInferRequest (the C++ client's generic stub sends any method's pre-serialised bytes), and
softmax over REST as v1 JSON and as v2 binary tensors (wrk), each against the same server.
Printed: p50/p99 latency, predictions/s, errors, and the ratio to the in-process rate measured in
this same run (--data_plane: each plane in turn; the native one only where it serves: savedmodel,
one worker); then softmax x16 with the access log off and on, in turns (issue 12's cost
target); then the issues' targets, each marked met or not. Bounded: every phase has a time limit
and the server is stopped at the end.
Wrap in `flock /tmp/zoo-cpu.lock` on a shared machine.

Clients share the machine's cores with the server, so their CPU cost matters. The default client
is benchmarks/grpc_load.cc (C++, generic stub, one thread: ~0.1 ms CPU a call), compiled on first
use into ~/.cache/keras-model-zoo/bin; it needs g++ and gRPC's C++ development files
(`apt-get install -y g++ libgrpc++-dev pkg-config`). Without them the Python clients are used
(grpc.aio in --client-processes processes: ~0.3 ms CPU a call, as much as the server spends).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine
from serving import quiet
from serving.clients import readiness
from training import data

ROOT = Path(__file__).resolve().parents[1]
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"  # the Open Inference Protocol (v2)
BATCHING = """max_batch_size { value: 32 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 2 }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latest(base: Path, model: str) -> Path:
    from serving.repository import versions

    try:
        found = versions.scan(base / model).versions
    except OSError:
        found = {}
    if not found:
        raise SystemExit(f"no exported version of {model} under {base}; train one first")
    return found[max(found)]


def request_bytes(model: str, x: np.ndarray) -> bytes:
    from tensorflow_serving.apis import predict_pb2

    from serving.runtime import tensors

    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    tensors.to_proto(x, r.inputs["images"])
    return r.SerializeToString()


def v2_request_bytes(model: str, x: np.ndarray) -> bytes:
    """The same request as a v2 ModelInferRequest, the tensor in raw_input_contents (as
    tritonclient sends it)."""
    from tritonclient.grpc import service_pb2

    r = service_pb2.ModelInferRequest(model_name=model)
    r.inputs.add(name="images", datatype="FP32", shape=x.shape)
    r.raw_input_contents.append(x.tobytes())
    return r.SerializeToString()


def v2_rest_body(x: np.ndarray) -> tuple[bytes, int]:
    """(body, JSON header length) of a v2 REST inference with Triton's binary tensors, asking
    for binary outputs (as tritonclient's HTTP client does by default)."""
    raw = x.tobytes()
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                     "shape": list(x.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


async def _load_async(address: str, payload: bytes, clients: int, seconds: float,
                      ready=None, go=None, method: str = PREDICT
                      ) -> tuple[list[float], dict[str, int], float, float]:
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)  # bytes in, bytes out: the client stays cheap
        try:  # connect and warm up; a failing call is counted below, in the timed window
            await call(payload, timeout=30)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise
        if ready is not None:  # line up with the other client processes
            ready.wait()
            go.wait()
        latencies, errors = [], {}
        stop_at = time.perf_counter() + seconds

        async def worker():
            clock = time.perf_counter
            append = latencies.append
            while True:
                t = clock()
                if t >= stop_at:
                    return
                try:
                    await call(payload, timeout=10)
                    append(clock() - t)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*[worker() for _ in range(clients)])
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return latencies, errors, elapsed, cpu


def cxx_client() -> tuple[Path | None, str]:
    """(path of the compiled benchmarks/grpc_load.cc, "") or (None, why it cannot be built)."""
    source = ROOT / "benchmarks" / "grpc_load.cc"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = data.cache_dir() / "bin" / f"grpc_load-{digest}"
    if binary.is_file():
        return binary, ""
    if not shutil.which("g++") or not shutil.which("pkg-config"):
        return None, "g++ or pkg-config is missing"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True,
                           text=True)
    if flags.returncode:
        return None, "gRPC C++ development files are missing (libgrpc++-dev)"
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    built = subprocess.run(["g++", "-O2", "-std=c++17", "-o", str(tmp), str(source),
                            *flags.stdout.split()], capture_output=True, text=True)
    if built.returncode:
        tmp.unlink(missing_ok=True)
        return None, f"g++ failed: {(built.stderr.strip().splitlines() or ['?'])[-1]}"
    tmp.replace(binary)  # atomic: a concurrent or interrupted build never leaves half a binary
    return binary, ""


def load_cxx(binary: Path, address: str, payload: bytes, clients: int, seconds: float,
             channels: int, method: str = PREDICT) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        request, latencies = Path(tmp) / "request.bin", Path(tmp) / "latencies.bin"
        request.write_bytes(payload)
        out = subprocess.run([str(binary), address, method, str(request), str(clients),
                              str(seconds), str(min(channels, clients)), str(latencies)],
                             capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode:
            raise SystemExit(f"grpc_load failed: {out.stderr.strip()}")
        out = json.loads(out.stdout)
        seconds_each = np.fromfile(latencies, np.float64)
    return summary(seconds_each, out["errors"], out["elapsed"], out["client_cpu_seconds"])


def summary(latencies: np.ndarray, errors: dict[str, int], elapsed: float,
            client_cpu: float) -> dict:
    """The figures of one load run from its OK calls' latencies (seconds) and failures."""
    lat, n = latencies * 1e3, len(latencies)
    calls = n + sum(errors.values())  # failed calls cost the client CPU too
    return {"requests": n, "errors": errors, "rate": n / elapsed,
            "client_cpu_us": client_cpu / max(calls, 1) * 1e6,
            "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if n else float("nan")}


def _client_process(address, payload, clients, seconds, ready, go, out, method) -> None:
    lat, errors, elapsed, cpu = asyncio.run(_load_async(address, payload, clients, seconds, ready,
                                                        go, method))
    out.send((np.asarray(lat, np.float64).tobytes(), errors, elapsed, cpu))
    out.close()


def load(address: str, payload: bytes, clients: int, seconds: float,
         processes: int = 1, method: str = PREDICT) -> dict:
    """`clients` concurrent callers spread over `processes` client processes (never the
    benchmark's own process, so the load generator does not share a GIL with anything)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    processes = max(1, min(processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    ready, go = ctx.Barrier(processes + 1), ctx.Event()
    pipes, procs = [], []
    for share in shares:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client_process,
                           args=(address, payload, share, seconds, ready, go, send, method),
                           daemon=True)
        proc.start()
        send.close()
        pipes.append(recv)
        procs.append(proc)
    try:
        ready.wait(timeout=120)
        go.set()
        latencies, errors, elapsed, cpu = [], {}, 0.0, 0.0
        for recv in pipes:
            if not recv.poll(seconds + 60):
                raise SystemExit("a client process did not report in time")
            lat, errs, el, c = recv.recv()
            cpu += c
            latencies.append(np.frombuffer(lat, np.float64))
            for k, v in errs.items():
                errors[k] = errors.get(k, 0) + v
            elapsed = max(elapsed, el)
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return summary(np.concatenate(latencies), errors, elapsed, cpu)


def in_process(backend: str, path: Path, x: np.ndarray, seconds: float) -> dict:
    from serving.runtime import backends

    b = backends.load(backend, path)
    n, lat = 0, []
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        b.run("serving_default", {"images": x})
        lat.append(time.perf_counter() - t)
        n += 1
    lat = np.array(lat) * 1e3
    return {"requests": n, "errors": {}, "rate": n / (time.perf_counter() - started),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def batching_limit(backend: str, path: Path, x: np.ndarray, seconds: float) -> dict:
    """Images/s in-process the way the server runs them: 1-row calls from 4 threads (batching
    off, --inference_threads 4) against 16-row calls from 2 threads (batching on with 16
    clients, num_batch_threads 2). Their ratio bounds what batching can give over gRPC, where
    every request also pays the same fixed RPC cost. 16-row calls from 2 threads need 32 rows in
    flight, which 16 clients never have: `ratio_16` is the best that 16 requests in flight allow
    (16-row calls from 1 thread or 8-row calls from 2)."""
    import threading

    from serving.runtime import backends

    b = backends.load(backend, path)

    def rate(threads: int, rows: int) -> float:
        xs = {"images": np.repeat(x, rows, axis=0)}
        b.run("serving_default", xs)
        counts, stop_at = [0] * threads, time.perf_counter() + seconds

        def work(i: int) -> None:
            while time.perf_counter() < stop_at:
                b.run("serving_default", xs)
                counts[i] += rows
        started = time.perf_counter()
        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(counts) / (time.perf_counter() - started)
    off, on = rate(4, 1), rate(2, 16)
    on_16 = max(rate(1, 16), rate(2, 8))
    return {"off_rate": off, "on_rate": on, "ratio": on / off, "on_16_rate": on_16,
            "ratio_16": on_16 / off}


def conversion(x: np.ndarray, rows: int, seconds: float = 0.5) -> list[tuple[str, float, float]]:
    """(what, tf µs, direct µs): tf.make_ndarray / tf.make_tensor_proto against
    serving.runtime.tensors for a request of `rows` images and its (rows x 10) float32 output."""
    import tensorflow as tf

    from serving.runtime import tensors

    images = np.repeat(x, rows, axis=0)
    probs = np.random.default_rng(0).random((rows, 10), np.float32)
    proto = tensors.to_proto(images)

    def per_call(fn) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(50):
                fn()
            n += 50
        return (time.perf_counter() - t0) / n * 1e6

    assert np.array_equal(tf.make_ndarray(proto), tensors.to_ndarray(proto))
    return [("request proto -> ndarray", per_call(lambda: tf.make_ndarray(proto)),
             per_call(lambda: tensors.to_ndarray(proto))),
            ("output ndarray -> proto", per_call(lambda: tf.make_tensor_proto(probs)),
             per_call(lambda: tensors.to_proto(probs)))]


def load_wrk(rest: str, model: str, x: np.ndarray, clients: int, seconds: float,
             tmp: Path, v2: bool = False) -> dict | None:
    """REST under Debian's `wrk` (keep-alive, `clients` connections, 2 threads): a load
    generator that is not ours. TF Serving's JSON predict, or (`v2`) a v2 inference with binary
    tensors, whose body wrk's Lua script reads from a file. None when wrk is not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = tmp / f"wrk-{model}-{'v2' if v2 else 'v1'}.lua"
    if v2:
        body, header = v2_rest_body(x)
        (tmp / f"{model}.v2body").write_bytes(body)
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\n'
            f'wrk.headers["Inference-Header-Content-Length"] = "{header}"\n'
            f'local f = assert(io.open({json.dumps(str(tmp / f"{model}.v2body"))}, "rb"))\n'
            'wrk.body = f:read("*a")\nf:close()\n')
        url = f"http://{rest}/v2/models/{model}/infer"
    else:
        body = json.dumps({"instances": x.tolist()})
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = {json.dumps(body)}\n")
        url = f"http://{rest}/v1/models/{model}:predict"
    done = subprocess.run([wrk, "-t2", f"-c{clients}", f"-d{seconds:g}s", "--latency", "-s",
                           str(script), url], capture_output=True, text=True,
                          timeout=seconds + 60)
    out = done.stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
        return float(m[1]) * scale[m[2]] if m else float("nan")

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    errors = {}
    if bad:
        errors["non-2xx"] = int(bad[1])
    if socket_errors:
        errors["socket"] = socket_errors[0]
    return {"rate": float(rate[1]) * len(x) if rate else 0.0, "p50_ms": ms("50%"),
            "p99_ms": ms("99%"), "errors": errors}


def tree_cpu_seconds(root: int) -> float:
    """CPU time used so far by process `root` and its descendants (user + system)."""
    tick, total, todo = os.sysconf("SC_CLK_TCK"), 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Server:
    def __init__(self, base: Path, backend: str, batching: bool, tmp: Path, workers: int = 1,
                 extra: tuple[str, ...] = (), batching_text: str = BATCHING):
        self.port = free_port()
        self.rest_port = free_port()
        cmd = [sys.executable, "-m", "serving.server", "--model_base_path", str(base),
               "--port", str(self.port), "--rest_api_port", str(self.rest_port),
               "--backend", backend, "--workers", str(workers),
               "--file_system_poll_wait_seconds", "0", "--log_level", "WARNING", *extra]
        if batching:
            cfg = tmp / "batching.config"
            cfg.write_text(batching_text)
            cmd += ["--enable_batching", "--batching_parameters_file", str(cfg)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log = open(tmp / f"server-{backend}-{batching}-{workers}-{'-'.join(extra)}.log"
                        .replace("/", "_"), "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=self.log,
                                     stdout=subprocess.DEVNULL)
        self.address = f"127.0.0.1:{self.port}"
        self.rest = f"127.0.0.1:{self.rest_port}"
        if readiness.wait_serving(self.address, 120, lambda: self.proc.poll() is None):
            return
        if self.proc.poll() is not None:
            raise SystemExit(f"server exited early; see {self.log.name}")
        self.stop()
        raise SystemExit("server did not start within 120 s")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its --workers (user + system)."""
        return tree_cpu_seconds(self.proc.pid)

    def batch_rows(self, model: str) -> tuple[float, float]:
        """(rows, batches) run so far for `model`, from the server's Prometheus metrics."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.rest}/monitoring/prometheus/metrics",
                                    timeout=30) as r:
            text = r.read().decode()
        sums = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            m = re.match(r'zoo_serving_batch_size_(sum|count)\{[^}]*\bmodel="([^"]+)"', line)
            if m and m[2] == model:
                sums[m[1]] += float(line.rsplit(" ", 1)[1])
        return sums["sum"], sums["count"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def access_log_cost(base: Path, backend: str, tmp: Path, run_load, x: np.ndarray,
                    seconds: float, rounds: int) -> dict:
    """softmax_regression x16 on two servers alike but for --access_log (batching off, one
    worker), measured in turns (off, on, off, on, ...) so that a neighbour's load on a shared
    machine hits both alike, over gRPC and (with wrk installed) over REST; medians of the
    rounds, and the access log's line count as proof that it was on."""
    payload = request_bytes("softmax_regression", x)
    log = tmp / "access.log"
    servers = {"off": Server(base, backend, False, tmp),
               "on": Server(base, backend, False, tmp, extra=("--access_log", str(log)))}
    rates: dict[str, list[float]] = {"off": [], "on": [], "rest off": [], "rest on": []}
    try:
        for _ in range(rounds):
            for mode, server in servers.items():
                r = run_load(server.address, payload, 16, seconds)
                rates[mode].append(r["rate"])
                print(fmt(f"gRPC {backend:10s} softmax x16, access log {mode:3s}", r, None),
                      flush=True)
                w = load_wrk(server.rest, "softmax_regression", x, 16, seconds, tmp)
                if w is not None:
                    rates[f"rest {mode}"].append(w["rate"])
                    print(fmt(f"REST {backend:10s} softmax x16 (wrk), access log {mode:3s}", w,
                              None), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    out = {"log_lines": len(log.read_text().splitlines())}
    for transport, prefix in (("grpc", ""), ("rest", "rest ")):
        if rates[prefix + "on"]:
            off = float(np.median(rates[prefix + "off"]))
            on = float(np.median(rates[prefix + "on"]))
            out[transport] = {"off_rates": rates[prefix + "off"],
                              "on_rates": rates[prefix + "on"], "off": off, "on": on,
                              "cost": 1 - on / off}
    return out


def busy(r: dict, server_cpu: float, rows: tuple[float, float],
         rows_before: tuple[float, float]) -> None:
    """Add to a load run's figures how busy it kept the CPUs (server + client CPU time over
    wall time x cores) and the average batch size the server ran."""
    calls = r["requests"] + sum(r["errors"].values())
    client_cpu = r.get("client_cpu_us", 0.0) * calls / 1e6
    elapsed = r["requests"] / r["rate"] if r["rate"] else float("nan")
    r["server_cpu_s"] = server_cpu
    r["server_cpu_us"] = server_cpu / max(calls, 1) * 1e6
    r["cpu_busy"] = (server_cpu + client_cpu) / (elapsed * (os.cpu_count() or 1))
    batches = rows[1] - rows_before[1]
    r["avg_batch_rows"] = (rows[0] - rows_before[0]) / batches if batches else None


def fmt(name: str, r: dict, baseline: float | None) -> str:
    ratio = f"{r['rate'] / baseline:6.2f}x" if baseline else "      "
    err = sum(r["errors"].values())
    return (f"{name:62s} p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  "
            f"{r['rate']:8.0f} pred/s  {ratio}  errors {err}"
            + (f" {r['errors']}" if err else "")
            + (f"  client CPU {r['client_cpu_us']:.0f} us/call" if "client_cpu_us" in r else "")
            + (f"  CPUs busy {r['cpu_busy']:.0%}" if "cpu_busy" in r else "")
            + (f"  server CPU {r['server_cpu_us']:.0f} us/call" if "server_cpu_us" in r else "")
            + (f"  batch {r['avg_batch_rows']:.1f} rows" if r.get("avg_batch_rows") else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    quiet.add_verbose_flag(p)
    p.add_argument("--base-path", type=Path, default=ROOT / "exported_models")
    p.add_argument("--models", nargs="+", default=["softmax_regression", "deep_cnn"])
    p.add_argument("--backends", nargs="+", default=["savedmodel", "onnx"])
    p.add_argument("--batching", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--clients", nargs="+", type=int, default=[1, 16])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    p.add_argument("--long-run", type=float, default=0.0,
                   help="also run softmax_regression at 16 clients for this many seconds "
                        "(onnx, batching off); the issue asks for 60")
    p.add_argument("--client-processes", type=int, default=2,
                   help="client processes sharing the concurrent callers (default 2; one "
                        "caller gets one process)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2],
                   help="server --workers settings to measure (default 1 2)")
    p.add_argument("--client", choices=["auto", "cxx", "python"], default="auto",
                   help="load generator: the C++ one (cxx; auto = cxx if it builds) or Python")
    p.add_argument("--channels", type=int, default=8,
                   help="connections the C++ client spreads its calls over (default 8)")
    p.add_argument("--access-log-rounds", type=int, default=5,
                   help="turns of softmax x16 with --access_log off and on, on the first "
                        "backend (default 5; 0 skips)")
    p.add_argument("--v2", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the Open Inference Protocol (v2 ModelInfer at 16 clients, "
                        "v2 REST with binary tensors) against Predict and v1 REST (default on)")
    p.add_argument("--data_plane", nargs="+", default=["python"],
                   choices=["python", "native"],
                   help="data planes to measure, each in turn (default python; native: "
                        "savedmodel with one worker only)")
    p.add_argument("--batching_parameters_file", type=Path,
                   help="BatchingParameters for the batching-on servers (default: max_batch_size "
                        "32, batch_timeout_micros 1000, max_enqueued_batches 64, "
                        "num_batch_threads 2)")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    batching_text = (args.batching_parameters_file.read_text() if args.batching_parameters_file
                     else BATCHING)
    print(machine(), flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    base = args.base_path.resolve()

    binary = None
    if args.client != "python":
        binary, why = cxx_client()
        if binary is None:
            if args.client == "cxx":
                raise SystemExit(f"cannot build the C++ client: {why}")
            print(f"note: Python clients (C++ client not built: {why})")

    def run_load(address: str, payload: bytes, clients: int, seconds: float,
                 method: str = PREDICT) -> dict:
        if binary is not None:
            return load_cxx(binary, address, payload, clients, seconds, args.channels, method)
        return load(address, payload, clients, seconds, min(args.client_processes, clients),
                    method)
    with np.load(data.cache_dir() / "mnist.npz") as f:
        x = f["x_test"][:1].astype(np.float32)
    results: dict[str, dict] = {}
    print("tensor conversion, tf.make_ndarray / tf.make_tensor_proto vs serving.runtime.tensors "
          "(direct buffer):")
    for rows in (1, 32):
        for what, tf_us, ours_us in conversion(x, rows):
            results[f"conversion/{what}/{rows}"] = {"tf_us": tf_us, "direct_us": ours_us}
            print(f"  {what:26s} {rows:2d} rows: tf {tf_us:7.2f} us, direct {ours_us:6.2f} us, "
                  f"{tf_us / ours_us:5.1f}x faster", flush=True)
    client = (f"C++ client, {args.channels} connections" if binary else
              f"Python clients in {args.client_processes} processes")
    print(f"serving load test: {args.seconds:g} s per line, 1-image requests, loopback, "
          f"{os.cpu_count()} CPUs shared by clients ({client}) and server")
    for backend in args.backends:
        for model in args.models:
            r = in_process(backend, latest(base, model), x, args.seconds)
            results[f"inproc/{backend}/{model}"] = r
            print(fmt(f"in-process {backend:10s} {model}", r, None), flush=True)
        if "deep_cnn" in args.models:
            r = results[f"inproc-batching/{backend}/deep_cnn"] = batching_limit(
                backend, latest(base, "deep_cnn"), x, args.seconds)
            print(f"in-process {backend:10s} deep_cnn 1-row calls x4 threads "
                  f"{r['off_rate']:6.0f} img/s, 16-row batches x2 threads {r['on_rate']:6.0f} "
                  f"img/s: batching limit {r['ratio']:.2f}x; 16 rows in flight (16-row x1 or "
                  f"8-row x2) {r['on_16_rate']:6.0f} img/s: {r['ratio_16']:.2f}x", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backend, batching, workers, data_plane in [
                (b, on, w, d) for b in args.backends for on in args.batching
                for w in args.workers for d in args.data_plane
                if d == "python" or (b == "savedmodel" and w == 1)]:
            suffix = "" if data_plane == "python" else f"/{data_plane}"
            server = Server(base, backend, batching == "on", Path(tmp), workers,
                            ("--data_plane", data_plane), batching_text)
            try:
                for model in args.models:
                    payload = request_bytes(model, x)
                    base_rate = results[f"inproc/{backend}/{model}"]["rate"]
                    for clients in args.clients:
                        cpu0, rows0 = server.cpu_seconds(), server.batch_rows(model)
                        r = run_load(server.address, payload, clients, args.seconds)
                        busy(r, server.cpu_seconds() - cpu0, server.batch_rows(model),
                             rows0)
                        key = (f"grpc/{backend}/batching-{batching}/workers-{workers}/"
                               f"{model}/{clients}{suffix}")
                        results[key] = r
                        label = (f"{backend:10s} batching {batching:3s} workers {workers} "
                                 f"{model:18s} x{clients:<2d}"
                                 + ("" if data_plane == "python" else f" {data_plane}"))
                        print(fmt(f"gRPC {label}", r, base_rate), flush=True)
                        if clients == 16 and args.v2:  # v2 ModelInfer, same server
                            v = run_load(server.address, v2_request_bytes(model, x),
                                         clients, args.seconds, MODEL_INFER)
                            results["v2grpc/" + key[5:]] = v
                            print(fmt(f"v2 gRPC {label}", v, r["rate"]), flush=True)
                        if model == "softmax_regression" and clients == 16:
                            w = load_wrk(server.rest, model, x, clients, args.seconds,
                                         Path(tmp))
                            if w is not None:
                                results["rest/" + key[5:]] = w
                                print(fmt(f"REST {label} (wrk)", w, r["rate"]),
                                      flush=True)
                            w2 = load_wrk(server.rest, model, x, clients, args.seconds,
                                          Path(tmp), v2=True) if args.v2 else None
                            if w is not None and w2 is not None:
                                results["v2rest/" + key[5:]] = w2
                                print(fmt(f"v2 REST binary {label} (wrk)", w2,
                                          w["rate"]), flush=True)
                if (args.long_run and backend == "onnx" and batching == "off"
                        and workers == max(args.workers)
                        and "softmax_regression" in args.models):
                    r = run_load(server.address, request_bytes("softmax_regression", x),
                                 16, args.long_run)
                    results["long_run"] = r
                    print(fmt(f"gRPC onnx batching off workers {workers} softmax x16 for "
                              f"{args.long_run:g} s", r, None), flush=True)
            finally:
                server.stop()
        if args.access_log_rounds > 0:
            results["access_log"] = access_log_cost(base, args.backends[0], Path(tmp), run_load,
                                                    x, args.seconds, args.access_log_rounds)
    print("\ntargets (issues 3, 11 and 12; issue 3's best over --workers):")

    def best(fmt_key: str, better) -> tuple[int, dict] | None:
        found = [(w, results[fmt_key.format(w=w)]) for w in args.workers
                 if fmt_key.format(w=w) in results]
        return max(found, key=lambda wr: better(wr[1])) if found else None

    checks = [
        ("softmax x16 onnx >= 3000 pred/s", "grpc/onnx/batching-off/workers-{w}/"
         "softmax_regression/16", lambda r: r["rate"], lambda r: r["rate"] >= 3000),
        ("softmax x16 onnx+batching >= 3000 pred/s", "grpc/onnx/batching-on/workers-{w}/"
         "softmax_regression/16", lambda r: r["rate"], lambda r: r["rate"] >= 3000),
        ("softmax x16 savedmodel+batching >= 2000 pred/s", "grpc/savedmodel/batching-on/"
         "workers-{w}/softmax_regression/16", lambda r: r["rate"], lambda r: r["rate"] >= 2000),
        ("softmax x1 gRPC p50 <= 1.0 ms (onnx)", "grpc/onnx/batching-off/workers-{w}/"
         "softmax_regression/1", lambda r: -r["p50_ms"], lambda r: r["p50_ms"] <= 1.0),
        ("softmax x1 gRPC p50 <= 1.0 ms (savedmodel)", "grpc/savedmodel/batching-off/"
         "workers-{w}/softmax_regression/1", lambda r: -r["p50_ms"],
         lambda r: r["p50_ms"] <= 1.0),
    ]
    for backend in args.backends:
        for w in args.workers:
            on = results.get(f"grpc/{backend}/batching-on/workers-{w}/deep_cnn/16")
            off = results.get(f"grpc/{backend}/batching-off/workers-{w}/deep_cnn/16")
            if on and off:
                ratio = on["rate"] / off["rate"]
                limit = results[f"inproc-batching/{backend}/deep_cnn"]["ratio"]
                print(f"  deep_cnn x16 {backend}, workers {w}: batching on / off = {ratio:.2f}x "
                      f"({'met' if ratio >= 1.5 else 'NOT met'}; target >= 1.5x; in-process "
                      f"limit {limit:.2f}x); with batching on, CPUs busy {on['cpu_busy']:.0%} "
                      f"({'met' if on['cpu_busy'] >= 0.9 else 'NOT met'}; target >= 90%), "
                      f"average batch {on['avg_batch_rows'] or 0:.1f} rows")
    for backend in args.backends:  # issue 26: on/off >= 0.8x the in-process limit, per plane
        for plane in args.data_plane:
            suffix = "" if plane == "python" else f"/{plane}"
            on = results.get(f"grpc/{backend}/batching-on/workers-1/deep_cnn/16{suffix}")
            off = results.get(f"grpc/{backend}/batching-off/workers-1/deep_cnn/16{suffix}")
            if on and off:
                ratio = on["rate"] / off["rate"]
                inproc = results[f"inproc-batching/{backend}/deep_cnn"]
                limit = inproc["ratio"]
                print(f"  deep_cnn x16 {backend}, {plane} plane, workers 1: batching on / off = "
                      f"{ratio:.2f}x = {ratio / limit:.2f}x the in-process limit {limit:.2f}x "
                      f"({'met' if ratio >= 0.8 * limit else 'NOT met'}; target >= 0.8x; "
                      f"{ratio / inproc['ratio_16']:.2f}x the limit with 16 rows in flight, "
                      f"{inproc['ratio_16']:.2f}x); "
                      f"on {on['rate']:.0f}, off {off['rate']:.0f} pred/s, average batch "
                      f"{on['avg_batch_rows'] or 0:.1f} rows, CPUs busy {on['cpu_busy']:.0%}")
    for name, key, better, ok in checks:
        found = best(key, better)
        if found:
            w, r = found
            print(f"  {name}: {'met' if ok(r) else 'NOT met'} (workers {w}: p50 "
                  f"{r['p50_ms']:.3f} ms, {r['rate']:.0f} pred/s)")
    # (measured, baseline, what, target): the same configuration, the same server, one run
    for kind, base_kind, what, target in (("rest", "grpc", "REST (wrk) / gRPC", 0.5),
                                          ("v2grpc", "grpc", "v2 gRPC ModelInfer / Predict", 0.9),
                                          ("v2rest", "rest", "v2 REST binary / v1 REST JSON "
                                                             "(wrk)", 0.9)):
        for key in [k for k in results if k.startswith(kind + "/")]:
            config = key[len(kind) + 1:]
            ratio = results[key]["rate"] / results[f"{base_kind}/{config}"]["rate"]
            print(f"  {what}, {config}: {ratio:.2f}x "
                  f"({'met' if ratio >= target else 'NOT met'}; target >= {target}x)")
    if "long_run" in results:
        r = results["long_run"]
        ok = not r["errors"] and r["p99_ms"] <= 10 * r["p50_ms"]
        print(f"  long run: zero errors, p99 <= 10x p50: {'met' if ok else 'NOT met'} "
              f"(p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, errors "
              f"{sum(r['errors'].values())})")
    if "access_log" in results:
        for transport, r in results["access_log"].items():
            if transport == "log_lines":
                continue
            target = "target <= 10%; issue 12" if transport == "grpc" else "no target"
            print(f"  access log on costs {r['cost'] * 100:.1f}% of softmax x16 throughput over "
                  f"{'gRPC' if transport == 'grpc' else 'REST (wrk)'} ("
                  + (f"{'met' if r['cost'] <= 0.10 else 'NOT met'}; " if transport == "grpc"
                     else "")
                  + f"{target}; median {r['on']:.0f} vs {r['off']:.0f} pred/s over "
                  f"{len(r['on_rates'])} turns; {results['access_log']['log_lines']} lines "
                  "logged in all)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
