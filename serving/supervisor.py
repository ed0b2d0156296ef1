"""The `--workers N` supervisor: N server processes sharing one gRPC (and REST) port, to use
more than one core.

A Python process answers gRPC on about one core (the GIL), so one process cannot use a second
core however many clients call it. With --workers N the command becomes a supervisor: it picks
the ports, starts N copies of itself (`--worker_index i`) that bind the same ports with
SO_REUSEPORT (the kernel spreads *connections* across them, so one client channel stays on one
worker), relays their logs, passes SIGTERM/SIGINT on and exits 0 once all have drained.

A worker that dies once the server is up (kill -9, the OOM killer) is started again, as
gunicorn's and nginx's masters do, while the others keep answering on the shared ports: after
1 s, doubling for each restart of that worker within --worker_restart_window_seconds (60); one
that dies again after --max_worker_restarts (5) such restarts stops the server (exit 1, naming
the worker). It gets the same flags, so it loads and verifies the same models; if a reload
changed the config since the start, the workers record it (siblings.Peers.record)
and the new worker starts from it. A worker that exits before the server was ever up stops it at
once: a bad flag or config would fail the same way again. Each restart is counted in
`zoo_serving_worker_restarts_total{worker}`, by the restarted process.

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
from serving.repository import protos
from serving.transports import auth

SUPERVISOR_ENV = "ZOO_SUPERVISOR_PID"
RELOADED_CONFIG = "reloaded.config"
MAX_RESTARTS = 5                 # --max_worker_restarts, within
RESTART_WINDOW_SECONDS = 60.0    # --worker_restart_window_seconds (systemd's burst, gentler)
RESTART_DELAY_SECONDS = 1.0      # before a restart, doubled for each restart in the window
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


class _Worker:
    """Worker `index`'s current process, the times it was restarted, and when it is due to be
    started again after a death."""

    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.restarts: list[float] = []
        self.due: float | None = None

    def recent_restarts(self, now: float, window: float) -> int:
        self.restarts = [t for t in self.restarts if now - t < window]
        return len(self.restarts)


def _supervise(args, argv: list[str], metrics_dir: str) -> int:
    n = args.workers
    port = args.port or _free_port(args.host)
    peers = [_free_port() for _ in range(n)]
    config_file = os.path.join(metrics_dir, RELOADED_CONFIG)
    env = {**os.environ, auth.PEER_TOKEN_ENV: secrets.token_hex(16),
           SUPERVISOR_ENV: str(os.getpid()),
           metrics.MULTIPROC_ENV: metrics_dir, protos.RELOADED_CONFIG_ENV: config_file}
    workers = [_Worker(i) for i in range(n)]
    relays: list[threading.Thread] = []
    ready = threading.Event()
    stopping = threading.Event()

    def relay(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            sys.stderr.write(line.replace("[serving]", f"[serving worker {i}]", 1))
            sys.stderr.flush()

    def start(w: _Worker, restarted: bool) -> None:
        cmd = [sys.executable, "-m", "serving.server", *argv, "--port", str(port),
               "--worker_index", str(w.index), "--worker_peers", ",".join(map(str, peers))]
        if restarted:
            cmd.append("--worker_restarted")
            if os.path.exists(config_file):  # the config the others run since a reload
                cmd += ["--model_config_file", config_file]
        w.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        relays.append(threading.Thread(target=relay, args=(w.index, w.proc), daemon=True))
        relays[-1].start()
        if restarted:
            threading.Thread(target=announce_back, args=(w, w.proc), daemon=True).start()

    def announce_back(w: _Worker, proc: subprocess.Popen) -> None:
        # Its private port says SERVING once it has loaded its models and its siblings are up.
        if readiness.wait_serving(f"127.0.0.1:{peers[w.index]}", timeout=float("inf"),
                                  alive=lambda: proc.poll() is None and not stopping.is_set()):
            print(f"[serving] worker {w.index} (pid {proc.pid}) is back: serving",
                  file=sys.stderr, flush=True)

    def wait_ready() -> None:
        # Any worker's own port will do: a worker turns SERVING only once all its siblings are
        # up (Server.start), and its private port is plain gRPC even when the shared one is TLS.
        if readiness.wait_serving(f"127.0.0.1:{peers[0]}", timeout=float("inf"),
                                  alive=lambda: not stopping.is_set()):
            ready.set()

    # Started from the main thread, which lives as long as the supervisor: PR_SET_PDEATHSIG
    # fires when the thread that forked a worker exits, not only the process.
    for w in workers:
        start(w, restarted=False)
    threading.Thread(target=wait_ready, daemon=True).start()

    def running() -> list[subprocess.Popen]:
        return [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]

    def on_signal(signum, frame) -> None:
        stopping.set()
        for p in running():
            p.send_signal(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def stop_all(code: int) -> int:
        stopping.set()
        for p in running():
            p.send_signal(signal.SIGTERM)
        for w in workers:
            if w.proc is not None:
                w.proc.wait()
                multiprocess.mark_process_dead(w.proc.pid, metrics_dir)
        for t in relays:
            t.join(5)
        return code

    announced = False
    exits: list[int] = []
    limit, window = args.max_worker_restarts, args.worker_restart_window_seconds
    while True:
        now = time.monotonic()
        for w in workers:
            if w.proc is None or w.proc.poll() is None:
                continue
            code, pid = w.proc.returncode, w.proc.pid
            multiprocess.mark_process_dead(pid, metrics_dir)  # its share of the gauges goes
            w.proc = None
            if stopping.is_set():
                exits.append(code)
                continue
            if not announced:  # never up (a bad flag or config: the same again on a restart)
                print(f"[serving] worker {w.index} exited with {code}; stopping the others",
                      file=sys.stderr, flush=True)
                return stop_all(code or 1)
            recent = w.recent_restarts(now, window)
            if recent >= limit:
                print(f"[serving] worker {w.index} (pid {pid}) exited with {code}, after {recent} "
                      f"restarts within {window:g} s (--max_worker_restarts "
                      f"{limit}); stopping the server", file=sys.stderr, flush=True)
                return stop_all(1)
            delay = RESTART_DELAY_SECONDS * 2 ** recent
            w.due = now + delay
            print(f"[serving] worker {w.index} (pid {pid}) exited with {code}; restarting it in "
                  f"{delay:g} s ({recent + 1} of at most {limit} within {window:g} s)",
                  file=sys.stderr, flush=True)
        if stopping.is_set():
            if not running():
                break
        else:
            for w in workers:
                if w.due is not None and now >= w.due:
                    w.due = None
                    w.restarts.append(now)
                    start(w, restarted=True)
        if not announced and ready.is_set():
            announced = True
            pids = ", ".join(str(w.proc.pid) for w in workers if w.proc is not None)
            print(f"[serving] {n} workers (pids {pids}) share gRPC port {port}; serving",
                  file=sys.stderr, flush=True)
        time.sleep(0.05)
    for t in relays:
        t.join(5)
    return 0 if all(code == 0 for code in exits) else 1
