"""What a REST request costs the server, against what the HTTP stack alone costs: issue 26's
question whether REST should move to the native plane too. Under Debian's wrk (16 connections,
2 threads), in one run:
- our server (Python plane, savedmodel) answering softmax_regression over TF Serving's JSON
  `:predict` and over v2 with binary tensors;
- a do-nothing aiohttp server on the same event loop (uvloop) and aiohttp, answering every POST
  with a fixed JSON body of the same size as our answer: the floor of the Python HTTP stack,
  which no change inside our handlers can go below;
- for scale, the native plane's gRPC Predict at 16 clients (C++ load generator), where built.
Printed: requests/s and the server's CPU a request (its process tree's CPU time over requests).

    python -m benchmarks.rest_floor [--base-path exported_models] [--seconds 5] [--rounds 3]

Wrap in `flock -x /tmp/zoo-cpu.lock` on a shared machine. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, table
from benchmarks.serving_load import (
    ROOT,
    Server,
    cxx_client,
    free_port,
    latest,
    load_cxx,
    load_wrk,
    request_bytes,
    tree_cpu_seconds,
)
from serving.native import plane

MODEL = "softmax_regression"


def serve_nothing(port: int, body: bytes) -> None:
    """The floor: aiohttp on uvloop, one route that answers any POST with `body`."""
    import asyncio

    import uvloop
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                loop=asyncio.new_event_loop())


class Floor:
    def __init__(self, body: bytes, tmp: Path):
        self.port = free_port()
        (tmp / "floor-body.json").write_bytes(body)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.rest_floor", "--serve-nothing", str(self.port),
             str(tmp / "floor-body.json")], cwd=ROOT)
        import socket

        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the do-nothing aiohttp server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def per_request(pid: int, seconds: float, run, *run_args) -> dict:
    """run(*run_args)'s figures, with `seconds` of load, and the server's CPU a request over it
    (wrk gives a rate, not a count)."""
    before = tree_cpu_seconds(pid)
    r = run(*run_args)
    if r is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    n = max(r.get("requests") or r["rate"] * seconds, 1)
    r["server_cpu_us"] = (tree_cpu_seconds(pid) - before) / n * 1e6
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rest_floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-path", type=Path, default=ROOT / "exported_models")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-nothing", nargs=2, metavar=("PORT", "BODY_FILE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_nothing:
        serve_nothing(int(args.serve_nothing[0]), Path(args.serve_nothing[1]).read_bytes())
        return 0
    print(machine())
    latest(args.base_path, MODEL)
    x = np.zeros((1, 28, 28), np.float32)
    figures: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = tmp / "models"
        base.mkdir()
        (base / MODEL).symlink_to(args.base_path.resolve() / MODEL)
        server = Server(base, "savedmodel", False, tmp)
        try:  # our answer's body, so the floor sends as many bytes back
            import urllib.request

            req = urllib.request.Request(
                f"http://{server.rest}/v1/models/{MODEL}:predict",
                json.dumps({"instances": x.tolist()}).encode(),
                {"Content-Type": "application/json"})
            body = urllib.request.urlopen(req, timeout=30).read()
        finally:
            server.stop()
        binary, _ = cxx_client()
        for _ in range(args.rounds):
            server = Server(base, "savedmodel", False, tmp)
            try:
                for v2, name in ((False, "ours, REST v1 JSON :predict"),
                                 (True, "ours, REST v2 binary infer")):
                    load_wrk(server.rest, MODEL, x, 16, 1, tmp, v2=v2)  # warm up
                    figures.setdefault(name, []).append(per_request(
                        server.proc.pid, args.seconds,
                        load_wrk, server.rest, MODEL, x, 16, args.seconds, tmp, v2))
            finally:
                server.stop()
            floor = Floor(body, tmp)
            try:
                rest = f"127.0.0.1:{floor.port}"
                load_wrk(rest, MODEL, x, 16, 1, tmp)
                figures.setdefault("do-nothing aiohttp (the floor)", []).append(per_request(
                    floor.proc.pid, args.seconds, load_wrk, rest, MODEL, x, 16, args.seconds, tmp))
            finally:
                floor.stop()
            if binary is not None and plane.built():
                server = Server(base, "savedmodel", False, tmp, extra=("--data_plane", "native"))
                payload = request_bytes(MODEL, x)
                try:
                    load_cxx(binary, server.address, payload, 16, 1.0, 8)
                    figures.setdefault("native plane, gRPC Predict", []).append(per_request(
                        server.proc.pid, args.seconds,
                        load_cxx, binary, server.address, payload, 16, args.seconds, 8))
                finally:
                    server.stop()
    print(f"{MODEL} x1 at 16 connections, {args.rounds} rounds of {args.seconds:g} s, medians:")
    rows = []
    for name, runs in figures.items():
        rows.append((name, f"{statistics.median(r['rate'] for r in runs):,.0f}",
                     f"{statistics.median(r['server_cpu_us'] for r in runs):,.0f}"))
    print(table(rows, ("server", "requests/s", "server CPU a request, us")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
