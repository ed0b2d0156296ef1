"""The `--workers N` supervisor: N server processes sharing one gRPC (and REST) port, to use
more than one core.

A Python process answers gRPC on about one core (the GIL), so one process cannot use a second
core however many clients call it. With --workers N the command becomes a supervisor: it picks
the ports, starts N copies of itself (`--worker_index i`) that bind the same ports with
SO_REUSEPORT (the kernel spreads *connections* across them, so one client channel stays on one
worker), relays their logs, passes SIGTERM/SIGINT on and exits 0 once all have drained. A worker
that dies unexpectedly stops the others and the supervisor exits 1: a server whose workers no
longer agree is worse than a restart by the process manager.

The supervisor also hands each worker its siblings' private loopback gRPC ports and a random
token (serving/siblings.py: a reload received by one worker is applied by all).

Metrics use prometheus_client's multiprocess mode: the supervisor makes a private temporary
directory, passes it as PROMETHEUS_MULTIPROC_DIR, marks a worker that exits as dead there (its
share of the queue gauge goes) and removes the directory when it exits; a scrape on any worker
reads every worker's files (serving/observability/metrics.py). Each worker loads its own copy of
the models and batches its own requests.

Workers die with their supervisor, even one killed by SIGKILL: each asks the kernel for SIGTERM
when its parent dies (prctl PR_SET_PDEATHSIG), then checks that its parent is still the
supervisor (one that died before that call would not be noticed otherwise). SIGTERM drains the
worker as on a normal stop.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import multiprocess

from serving.clients import readiness
from serving.observability import metrics
from serving.transports import auth

SUPERVISOR_ENV = "ZOO_SUPERVISOR_PID"
METRICS_DIR_PREFIX = "zoo-serving-metrics-"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on host:port (a wildcard host is probed on
    loopback). SO_REUSEPORT lets a second server bind beside a live one, so binding is no test."""
    if not port:
        return False
    host = host.strip("[]")
    hosts = {"": ["127.0.0.1"], "0.0.0.0": ["127.0.0.1"], "::": ["::1", "127.0.0.1"]}.get(
        host, [host])
    for h in hosts:
        try:
            addresses = socket.getaddrinfo(h, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue  # binding will say what is wrong with the host
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                try:
                    s.connect(address)
                    return True
                except OSError:
                    pass
    return False


def die_with_supervisor() -> None:
    """In a worker, first thing: have the kernel send SIGTERM when the parent dies (Linux), then
    make sure the parent is still the supervisor that started this worker."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (AttributeError, OSError):  # no prctl (not Linux): watch the parent instead
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=watch, daemon=True, name="supervisor-watch").start()
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0"))
    if supervisor and os.getppid() != supervisor:
        sys.exit(1)  # the supervisor died before this worker could ask to follow it


def _sweep_metrics_dirs() -> None:
    """Remove the metrics directories of supervisors that are gone (killed by SIGKILL, which
    leaves no chance to clean up)."""
    for d in Path(tempfile.gettempdir()).glob(METRICS_DIR_PREFIX + "*"):
        try:
            pid = int(d.name[len(METRICS_DIR_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not ours, or another user's live supervisor


def supervise(args, argv: list[str]) -> int:
    """Run `args.workers` copies of `python -m serving.server argv` on shared ports."""
    _sweep_metrics_dirs()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    try:
        return _supervise(args, argv, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(args, argv: list[str], metrics_dir: str) -> int:
    n = args.workers
    port = args.port or _free_port(args.host)
    peers = [_free_port() for _ in range(n)]
    env = {**os.environ, auth.PEER_TOKEN_ENV: secrets.token_hex(16),
           SUPERVISOR_ENV: str(os.getpid()),
           metrics.MULTIPROC_ENV: metrics_dir}
    procs = []
    # Started from the main thread, which lives as long as the supervisor: PR_SET_PDEATHSIG
    # fires when the thread that forked a worker exits, not only the process.
    for i in range(n):
        cmd = [sys.executable, "-m", "serving.server", *argv, "--port", str(port),
               "--worker_index", str(i), "--worker_peers", ",".join(map(str, peers))]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL))
    ready = threading.Event()
    stopping = threading.Event()

    def relay(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            sys.stderr.write(line.replace("[serving]", f"[serving worker {i}]", 1))
            sys.stderr.flush()

    def wait_ready() -> None:
        # Any worker's own port will do: a worker turns SERVING only once all its siblings are
        # up (Server.start), and its private port is plain gRPC even when the shared one is TLS.
        if readiness.wait_serving(f"127.0.0.1:{peers[0]}", timeout=float("inf"),
                                  alive=lambda: not stopping.is_set()):
            ready.set()

    relays = [threading.Thread(target=relay, args=(i, p), daemon=True)
              for i, p in enumerate(procs)]
    for t in relays:
        t.start()
    threading.Thread(target=wait_ready, daemon=True).start()

    def on_signal(signum, frame) -> None:
        stopping.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    dead: set[int] = set()

    def mark_dead() -> None:
        for p in procs:
            if p.returncode is not None and p.pid not in dead:
                dead.add(p.pid)
                multiprocess.mark_process_dead(p.pid, metrics_dir)

    announced = False
    while True:
        codes = [p.poll() for p in procs]
        mark_dead()
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
            mark_dead()
            for t in relays:
                t.join(5)
            return code if code and not announced else 1
        if not announced and ready.is_set():
            announced = True
            print(f"[serving] {n} workers (pids {', '.join(str(p.pid) for p in procs)}) share "
                  f"gRPC port {port}; serving", file=sys.stderr, flush=True)
        time.sleep(0.05)
    for t in relays:
        t.join(5)
    return 0 if all(p.returncode == 0 for p in procs) else 1
