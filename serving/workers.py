"""`--workers N`: N server processes sharing one gRPC (and REST) port, to use more than one core.

A Python process answers gRPC on about one core (the GIL), so one process cannot use a second
core however many clients call it. With --workers N the command becomes a supervisor: it picks
the ports, starts N copies of itself (`--worker_index i`) that bind the same ports with
SO_REUSEPORT (the kernel spreads *connections* across them, so one client channel stays on one
worker), relays their logs, passes SIGTERM/SIGINT on and exits 0 once all have drained. A worker
that dies unexpectedly stops the others and the supervisor exits 1: a server whose workers no
longer agree is worse than a restart by the process manager.

What every worker must agree on goes over a private loopback gRPC port per worker, guarded by a
random token the supervisor hands out (outsiders cannot call these):
- a HandleReloadConfigRequest received by any worker is applied by every worker before it is
  answered, so no connection sees the old config afterwards;
- the Prometheus endpoint returns every worker's series, each labelled worker="i".
Each worker loads its own copy of the models and batches its own requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

TOKEN_ENV = "ZOO_WORKER_TOKEN"
TOKEN_HEADER = "zoo-worker-token"
METRICS_METHOD = "/zoo.serving.Worker/Metrics"
READY = "[serving] models:"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Peers:
    """A worker's view of its siblings: their private addresses and the shared token."""

    def __init__(self, index: int, ports: list[int]):
        self.index = index
        self.ports = ports
        self.token = os.environ.get(TOKEN_ENV, "")
        if not self.token:
            raise RuntimeError(f"a worker needs {TOKEN_ENV} (set by the supervisor)")
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def own_address(self) -> str:
        return f"127.0.0.1:{self.ports[self.index]}"

    def is_peer(self, context: grpc.aio.ServicerContext) -> bool:
        """True for a call from a sibling worker (it carries the token)."""
        metadata = dict(context.invocation_metadata() or ())
        return secrets.compare_digest(metadata.get(TOKEN_HEADER, ""), self.token)

    def _others(self):
        for i, port in enumerate(self.ports):
            if i != self.index:
                if i not in self._channels:
                    self._channels[i] = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                yield i, self._channels[i]

    async def reload(self, request: model_management_pb2.ReloadConfigRequest
                     ) -> list[tuple[int, grpc.StatusCode, str]]:
        """Apply a reload on every other worker; returns (worker, code, message) of failures."""
        async def one(i, channel):
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            try:
                response = await stub.HandleReloadConfigRequest(
                    request, timeout=600, metadata=((TOKEN_HEADER, self.token),))
            except grpc.aio.AioRpcError as e:
                return i, e.code(), e.details() or ""
            if response.status.error_code:
                return i, grpc.StatusCode.UNKNOWN, response.status.error_message
            return None
        results = await asyncio.gather(*[one(i, c) for i, c in self._others()])
        return [r for r in results if r is not None]

    async def metric_families(self) -> tuple[list, list[str]]:
        """(families of every other worker that answered, notes about those that did not)."""
        async def one(i, channel):
            call = channel.unary_unary(METRICS_METHOD)
            try:
                return json.loads(await call(b"", timeout=2,
                                             metadata=((TOKEN_HEADER, self.token),))), None
            except grpc.aio.AioRpcError as e:
                return None, f"# worker {i} did not answer: {e.code().name}"
        results = await asyncio.gather(*[one(i, c) for i, c in self._others()])
        return [f for f, _ in results if f is not None], [n for _, n in results if n]

    def metrics_handler(self, metrics) -> grpc.GenericRpcHandler:
        """The private method a sibling calls to read this worker's metric families."""
        async def handle(request: bytes, context):
            if not self.is_peer(context):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "workers only")
            return json.dumps(metrics.families()).encode()
        service, method = METRICS_METHOD.strip("/").split("/")
        return grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(handle)})

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def supervise(args, argv: list[str]) -> int:
    """Run `args.workers` copies of `python -m serving.server argv` on shared ports."""
    n = args.workers
    port = args.port or _free_port(args.host)
    peers = [_free_port() for _ in range(n)]
    env = {**os.environ, TOKEN_ENV: secrets.token_hex(16)}
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "serving.server", *argv, "--port", str(port),
               "--worker_index", str(i), "--worker_peers", ",".join(map(str, peers))]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL))
    ready = [threading.Event() for _ in procs]
    models_line = [""]

    def relay(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            if line.startswith(READY):
                models_line[0] = line[len(READY):].strip()
                ready[i].set()
            sys.stderr.write(line.replace("[serving]", f"[serving worker {i}]", 1))
            sys.stderr.flush()

    relays = [threading.Thread(target=relay, args=(i, p), daemon=True)
              for i, p in enumerate(procs)]
    for t in relays:
        t.start()
    stopping = threading.Event()

    def on_signal(signum, frame) -> None:
        stopping.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    announced = False
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        failed = [(i, c) for i, c in enumerate(codes) if c is not None and not stopping.is_set()]
        if failed:
            i, code = failed[0]
            print(f"[serving] worker {i} exited with {code}; stopping the others",
                  file=sys.stderr, flush=True)
            stopping.set()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            for t in relays:
                t.join(5)
            return code if code and not announced else 1
        if not announced and all(e.is_set() for e in ready):
            announced = True
            print(f"[serving] {n} workers (pids {', '.join(str(p.pid) for p in procs)}) share "
                  f"gRPC port {port}", file=sys.stderr, flush=True)
            print(f"{READY} {models_line[0]}; {n} workers", file=sys.stderr, flush=True)
        time.sleep(0.05)
    for t in relays:
        t.join(5)
    return 0 if all(p.returncode == 0 for p in procs) else 1
