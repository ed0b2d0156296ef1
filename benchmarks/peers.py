"""Our server against KServe's and MLServer's Python servers, driven by one load generator.

    python -m benchmarks.peers [--base-path exported_models] [--model softmax_regression]
        [--batches 1 16] [--concurrency 1 8] [--window-ms 1000] [--only ours|peers]

Triton's perf_analyzer (benchmarks/perf_analyzer.py installs it) sends the same real MNIST test
digits (--input-data JSON, 64 images) to every server, one cell per batch size x concurrency,
100 warm-up requests, 1 s windows until three agree within --stability percent:
- ours: serving.server with --backend savedmodel|onnx x --workers 1|2 (w1, w2), and where
  build/native/predictd is built, savedmodel with --data_plane native ("native"), over TF
  Serving's Predict (perf_analyzer's tfserving kind) and over the Open Inference Protocol (v2,
  its triton kind: needs our ModelConfig);
- KServe (benchmarks/peer_kserve.py; ONNX Runtime's defaults, and with its idle threads
  sleeping as ours do) and MLServer (benchmarks/peer_mlserver.py, parallel workers 0 and 1,
  its default) serving the latest export's model.onnx with the same ONNX Runtime version,
  each in a venv of its own (they conflict with each other and with us), made on first use
  under ~/.cache/keras-model-zoo/peers/.
Printed: inferences/s, p50/p99 and the server's CPU a request per server and cell, then per
cell our best against each peer's best (and our best over v2 alone). A cell that fails (a
server that cannot be driven, a measurement that never stabilises) is reported as failed, never
fatal.
The machine is named first; wrap in `flock -x /tmp/zoo-cpu.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import perf_analyzer
from benchmarks.common import machine, table
from benchmarks.serving_load import Server, free_port, latest, tree_cpu_seconds
from serving.native import plane
from training import data

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# The peers' own pins; ONNX Runtime is ours (pyproject.toml), so every server runs the same one.
# uvloop 0.21: MLServer 1.7.1's parallel workers call asyncio.get_event_loop() before making a
# loop, which uvloop >= 0.22 refuses (the worker dies and the model never loads).
PEERS = {
    "kserve": ["kserve==0.21.0"],
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0"],
}


@dataclass
class Target:
    name: str  # as printed
    group: str  # "ours", "kserve", "mlserver"
    kind: str  # perf_analyzer --service-kind
    start: object  # () -> (grpc address, stop callable)


def peers_dir() -> Path:
    return data.cache_dir() / "peers"


def peer_venv(peer: str) -> Path:
    """A venv holding `peer`'s pins and our ONNX Runtime, made once (a stamp names the pins)."""
    pins = [*PEERS[peer], f"onnxruntime=={importlib.metadata.version('onnxruntime')}"]
    venv = peers_dir() / peer
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text().split() == pins:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    print(f"[peers] making {venv}: {' '.join(pins)}", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    out = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *pins],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if "ERROR" in line] or [""]
        raise RuntimeError(f"pip install {' '.join(pins)} failed: {lines[-1]}")
    stamp.write_text("\n".join(pins) + "\n")
    return venv


def wait_v2_ready(address: str, model: str, proc: subprocess.Popen, timeout: float) -> None:
    import tritonclient.grpc as triton

    deadline = time.monotonic() + timeout
    client = triton.InferenceServerClient(address)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}")
            try:
                if client.is_model_ready(model):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.3)
    finally:
        client.close()
    raise RuntimeError(f"not ready within {timeout:g} s")


def start_peer(peer: str, version_dir: Path, model: str, tmp: Path, extra: list[str]):
    venv = peer_venv(peer)
    grpc_port, http_port = free_port(), free_port()
    cmd = [str(venv / "bin/python"), str(HERE / f"peer_{peer}.py"), "--model_dir",
           str(version_dir), "--model_name", model, "--grpc_port", str(grpc_port),
           "--http_port", str(http_port), *extra]
    if peer == "mlserver":
        cmd += ["--metrics_port", str(free_port()), "--repository",
                tempfile.mkdtemp(prefix="mlserver-", dir=tmp)]
    log = open(tmp / f"{peer}-{grpc_port}.log", "w")
    # Its own process group: MLServer's parallel workers and KServe's gRPC process go with it.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                            start_new_session=True, stdin=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

    def stop() -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()

    address = f"127.0.0.1:{grpc_port}"
    try:
        wait_v2_ready(address, model, proc, 180)
    except Exception as e:
        stop()
        raise RuntimeError(f"{peer} did not start ({e}); see {log.name}") from None
    return address, stop, proc.pid


def start_ours(base: Path, backend: str, workers: int, tmp: Path, data_plane: str = "python"):
    server = Server(base, backend, False, tmp, workers, extra=("--data_plane", data_plane))
    return server.address, server.stop, server.proc.pid


def digits_file(tmp: Path, count: int) -> Path:
    """perf_analyzer's --input-data: the first `count` MNIST test digits, raw 0-255 float32 (the
    tool's default random bytes include NaNs, on which MLServer's response packing fails)."""
    x = data.load_dataset("mnist").x_test[:count].astype(np.float32)
    path = tmp / "digits.json"
    path.write_text(json.dumps({"data": [{"images": {"content": d.reshape(-1).tolist(),
                                                     "shape": list(d.shape)}} for d in x]}))
    return path


def measure(prefix: list[str], target: Target, server: tuple, model: str, batch: int,
            concurrency: int, args, inputs: Path, tmp: Path) -> dict:
    """One perf_analyzer cell: {"rate", "p50_ms", "p99_ms", "server_cores", "server_us",
    "stability"} or {"error"}. server_cores: the server's CPU (its whole process tree) over the
    run's wall time; server_us: that per request at the measured rate (warm-up and start
    included, so a little low). Windows that never agree within --stability (a neighbour's load)
    get one more try at twice that."""
    r = {}
    for stability in (args.stability, 2 * args.stability):
        r = _measure(prefix, target, server, model, batch, concurrency, args, inputs, tmp,
                     stability)
        if "stable measurement" not in r.get("error", ""):
            break
    return r


def _measure(prefix, target, server, model, batch, concurrency, args, inputs, tmp,
             stability) -> dict:
    address, _, pid = server
    report = tmp / f"pa-{os.getpid()}-{time.monotonic_ns()}.csv"
    cmd = [*prefix, "-m", model, "--service-kind", target.kind, "-i", "grpc", "-u", address,
           "-b", str(batch), "--concurrency-range", f"{concurrency}:{concurrency}",
           "-p", str(args.window_ms), "-s", str(stability), "-r", str(args.max_trials),
           "--warmup-request-count", "100", "--input-data", str(inputs),
           "-f", str(report), "--verbose-csv"]
    cpu0, wall0 = tree_cpu_seconds(pid), time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.cell_timeout:g} s"}
    if out.returncode != 0 or not report.exists():
        lines = [line.strip() for line in (out.stdout + out.stderr).splitlines()
                 if line.strip()]
        return {"error": (lines[-1] if lines else f"exit {out.returncode}")[:160]}
    with report.open() as f:
        row = next(csv.DictReader(f))
    report.unlink()
    cores = (tree_cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    rate = float(row["Inferences/Second"])
    return {"rate": rate, "p50_ms": int(row["p50 latency"]) / 1e3,
            "p99_ms": int(row["p99 latency"]) / 1e3, "server_cores": cores,
            "server_us": cores / (rate / batch) * 1e6, "stability": stability}


def targets(args, base: Path, version_dir: Path, tmp: Path) -> list[Target]:
    """Our servers and the peers' in turns (each of ours measured on both APIs while it is up),
    so that a neighbour's load on the shared machine falls on both sides alike."""
    ours: list[list[Target]] = []
    peers: list[list[Target]] = []
    if args.only != "peers":
        for backend in ("savedmodel", "onnx"):
            for workers in (1, 2):
                start = (lambda b=backend, w=workers: start_ours(base, b, w, tmp))
                ours.append([Target(f"ours {api} {backend} w{workers}", "ours", kind, start)
                             for kind, api in (("tfserving", "Predict"), ("triton", "v2"))])
        if plane.built():  # the native data plane (issue 26): SavedModel versions, one process
            start = (lambda: start_ours(base, "savedmodel", 1, tmp, "native"))
            ours.append([Target(f"ours {api} savedmodel native", "ours", kind, start)
                         for kind, api in (("tfserving", "Predict"), ("triton", "v2"))])
    if args.only != "ours":
        for spin, flags in (("", []), (", ORT no spinning", ["--no_spinning"])):
            peers.append([Target(f"KServe 0.21 v2{spin}", "kserve", "triton",
                                 lambda f=flags: start_peer("kserve", version_dir, args.model,
                                                            tmp, f))])
        for pw in (0, 1):
            peers.append([Target(f"MLServer 1.7.1 v2 parallel_workers {pw}", "mlserver",
                                 "triton", lambda pw=pw: start_peer(
                                     "mlserver", version_dir, args.model, tmp,
                                     ["--parallel_workers", str(pw)]))])
    turns = [ours[i:i + 1] + peers[i:i + 1] for i in range(max(len(ours), len(peers)))]
    return [t for turn in turns for server in turn for t in server]


def cell_text(r: dict) -> str:
    if "error" in r:
        return "failed"
    return f"{r['rate']:,.0f} ({r['p50_ms']:.1f}/{r['p99_ms']:.1f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-path", type=Path, default=ROOT / "exported_models")
    p.add_argument("--model", default="softmax_regression")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    p.add_argument("--window-ms", type=int, default=1000, help="measurement window (1000)")
    p.add_argument("--stability", type=int, default=10,
                   help="percent within which 3 windows must agree (perf_analyzer's -s, 10)")
    p.add_argument("--max-trials", type=int, default=10, help="windows before giving up (10)")
    p.add_argument("--cell-timeout", type=float, default=120.0)
    p.add_argument("--digits", type=int, default=64, help="distinct test images sent (64)")
    p.add_argument("--only", choices=["ours", "peers"], help="measure one side only")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    print(machine(), flush=True)
    prefix, reason = perf_analyzer.locate(install=True)
    if prefix is None:
        print(reason)
        return 1
    base = args.base_path.resolve()
    version_dir = latest(base, args.model)
    cells = [(b, c) for b in args.batches for c in args.concurrency]
    print(f"perf_analyzer {perf_analyzer.VERSION}, gRPC, {args.model} {version_dir} "
          f"(model.onnx for the peers), {args.digits} MNIST test digits; per cell 100 warm-up "
          f"requests, {args.window_ms} ms windows until 3 agree within {args.stability}% "
          f"(at most {args.max_trials}); {os.cpu_count()} CPUs shared by load generator and "
          f"server; load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
          flush=True)
    results: dict[str, dict[str, dict]] = {}
    groups: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        inputs = digits_file(tmp, args.digits)
        started: dict[object, tuple] = {}
        todo = targets(args, base, version_dir, tmp)
        for i, target in enumerate(todo):
            groups[target.name] = target.group
            row = results[target.name] = {}
            try:
                if target.start not in started:
                    started[target.start] = target.start()
                server = started[target.start]
            except (RuntimeError, SystemExit) as e:
                row.update({f"b{b} c{c}": {"error": str(e)} for b, c in cells})
                print(f"{target.name}: failed to start: {e}", flush=True)
                continue
            try:
                for b, c in cells:
                    r = row[f"b{b} c{c}"] = measure(prefix, target, server, args.model, b, c,
                                                    args, inputs, tmp)
                    cpu = (f", server {r['server_cores']:.2f} cores, {r['server_us']:,.0f} us "
                           "CPU a request" if "rate" in r else "")
                    print(f"{target.name:40s} b{b:<2d} c{c}: "
                          f"{r.get('error') or cell_text(r)}{cpu}", flush=True)
            finally:  # stop once no later target shares this server
                if all(t.start is not target.start for t in todo[i + 1:]):
                    started.pop(target.start)[1]()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    names = [f"b{b} c{c}" for b, c in cells]
    print("\ninferences/s (p50/p99 ms) per server and cell:")
    print(table([(n, *(cell_text(results[n][c]) for c in names)) for n in results],
                ("server", *names)))
    print("\nserver CPU a request, us (its process tree's CPU time over requests sent):")
    print(table([(n, *(f"{results[n][c]['server_us']:,.0f}" if "rate" in results[n][c]
                       else "-" for c in names)) for n in results], ("server", *names)))
    failures = {(n, r["error"]) for n in results for r in results[n].values() if "error" in r}
    for name, error in sorted(failures):
        print(f"  failed: {name}: {error}")
    summary = summarise(results, groups, names)
    print("\nper cell, best of each side (ratio = ours / peer; target >= 1.0x):")
    print(table(summary, ("cell", "ours best", "ours v2 best", "KServe best", "MLServer best",
                          "ours/KServe", "ours/MLServer", "v2/KServe", "v2/MLServer")))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


def summarise(results: dict, groups: dict, names: list[str]) -> list[tuple]:
    def best(cell: str, keep) -> tuple[float, str]:
        rates = [(results[n][cell]["rate"], n) for n in results
                 if keep(n) and "rate" in results[n][cell]]
        return max(rates) if rates else (0.0, "")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    rows = []
    for cell in names:
        ours = best(cell, lambda n: groups[n] == "ours")
        v2 = best(cell, lambda n: groups[n] == "ours" and " v2 " in n)
        kserve = best(cell, lambda n: groups[n] == "kserve")
        mlserver = best(cell, lambda n: groups[n] == "mlserver")

        def show(r):
            return f"{r[0]:,.0f} ({r[1].removeprefix('ours ')})" if r[0] else "failed"

        rows.append((cell, show(ours), f"{v2[0]:,.0f}" if v2[0] else "failed",
                     f"{kserve[0]:,.0f}" if kserve[0] else "failed",
                     f"{mlserver[0]:,.0f}" if mlserver[0] else "failed",
                     ratio(ours[0], kserve[0]), ratio(ours[0], mlserver[0]),
                     ratio(v2[0], kserve[0]), ratio(v2[0], mlserver[0])))
    return rows


if __name__ == "__main__":
    sys.exit(main())
