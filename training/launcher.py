"""`python -m training.train MODEL --workers N`: a local cluster of N worker processes on
127.0.0.1 (docs/ARCHITECTURE.md, "Multi-worker training").

Each worker is `python -m training.train` with the same arguments, its own TF_CONFIG (loopback
ports) and one shared --run-dir that the chief (worker 0) writes. The workers share a private
network namespace whose only interface is loopback (training/loopback.py): TensorFlow's worker
service listens on every interface, and nothing outside the run may reach it. The chief's output
is this command's output; the others' goes to RUN_DIR/logs/worker-K.log (the one thing the chief
accepts in a new run folder). The run fails as a whole: when any worker fails, the others are
stopped and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from training import interrupts, loopback, run_folder
from training.multiworker import TF_CONFIG

POLL_SECONDS = 0.2
STOP_SECONDS = 5  # SIGTERM, then SIGKILL for a worker that does not stop within this
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel calls free now (all held open at once, so no repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses},
                       "task": {"type": "worker", "index": index}})


def worker_argv(argv: list[str], run_dir: Path | None) -> list[str]:
    """The launcher's own arguments without --workers, plus the run directory it chose."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out + (["--run-dir", str(run_dir)] if run_dir is not None else [])


def _die_with_launcher() -> None:
    """In the child, before exec: a killed launcher leaves no worker. SIGKILL, since a worker
    catches SIGTERM (TensorFlow's preemption notifier) and would go on alone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (AttributeError, OSError):
        pass


def _preexec(setup, error_file: Path):
    """The child's set-up before exec: `setup` (the private network), then the parent-death
    signal (after it: a change of credentials clears that signal). A failure is written to
    `error_file`, since subprocess only says that the preexec function raised."""
    def run():
        try:
            setup()
        except OSError as e:
            error_file.write_text(str(e))
            raise
        _die_with_launcher()
    return run


class IsolationError(RuntimeError):
    """The local workers could not be given a private network: they are not started."""


def describe(code: int) -> str:
    return (f"was killed by {signal.Signals(-code).name}" if code < 0
            else f"exited with status {code}")


def launch(args: argparse.Namespace, argv: list[str], run_dir: Path, chosen: Path | None) -> int:
    """Start the workers in `run_dir` (`chosen`: the --run-dir to add to their arguments, or
    None) and wait; the caller made every check first (training/train.py, `prepare_launch`).
    SIGTERM (as ^C) stops the workers, keeps their logs and says how to go on (training/train.py
    installs the handler)."""
    n = args.workers
    addresses = [f"127.0.0.1:{p}" for p in free_ports(n)]
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)  # the chief accepts a run folder holding only these logs
    command = [sys.executable, "-m", "training.train", *worker_argv(argv, chosen)]
    print(f"[launcher] {n} workers on {', '.join(addresses)} (a private network: loopback "
          f"only); run dir {run_dir}; the other workers' output goes to {logs}/",
          file=sys.stderr, flush=True)
    procs: list[subprocess.Popen] = []
    files = []
    code = 1
    try:
        for i in range(n):
            env = dict(os.environ, **{TF_CONFIG: tf_config(addresses, i)})
            out = None
            if i:  # appended: a resumed run adds to its logs
                out = open(logs / f"worker-{i}.log", "a+")
                files.append(out)
            setup = (loopback.new_private_network if i == 0 else
                     lambda pid=procs[0].pid: loopback.join_private_network(pid))
            with tempfile.NamedTemporaryFile(prefix="zoo-preexec-") as error_file:
                try:
                    # A session of their own: ^C reaches the launcher only, which stops them.
                    procs.append(subprocess.Popen(
                        command, env=env, stdout=out, stderr=out, start_new_session=True,
                        preexec_fn=_preexec(setup, Path(error_file.name))))
                except subprocess.SubprocessError:
                    detail = Path(error_file.name).read_text() or "unknown reason"
                    raise IsolationError(
                        f"cannot give the local workers a private loopback network ({detail}), "
                        "and TensorFlow's worker service would listen on every interface: "
                        f"start the workers yourself with {TF_CONFIG} where a firewall guards "
                        "their ports") from None
            print(f"[launcher] worker {i}: pid {procs[-1].pid}, {addresses[i]}",
                  file=sys.stderr, flush=True)
        code = wait(procs, addresses, run_dir, logs, args.peer_timeout, files)
        return code
    except (KeyboardInterrupt, interrupts.Interrupted) as e:
        stop(procs)
        stopped = interrupts.as_interrupted(e)
        raise interrupts.Interrupted(stopped.signum, what_is_kept(
            run_dir, n, f"interrupted by {stopped.signal_name}", fresh=not args.resume)) from None
    finally:
        stop(procs)
        for f in files:
            f.close()
        if code and not args.resume and not (run_dir / run_folder.STATE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # no epoch committed: nothing to keep


def what_is_kept(run_dir: Path, n: int, what: str, fresh: bool) -> str:
    """`what` happened; then: the resume command where state.json exists, else what is gone."""
    if (run_dir / run_folder.STATE).exists():
        return (f"{what}; continue from the last committed epoch with: "
                + run_folder.resume_command(run_dir, n))
    return f"{what} before the first epoch ended" + (f"; removed {run_dir}" if fresh else "")


def last_line(log) -> str:
    """The last line a worker wrote (read through the launcher's own handle)."""
    log.flush()
    log.seek(0)
    lines = [ln.strip() for ln in log.read().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def wait(procs, addresses, run_dir: Path, logs: Path, peer_timeout: float, files) -> int:
    """Until every worker has exited 0 (0), or one has failed (its status, the others stopped)."""
    finished_at = None
    while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i = failed[0]
            stop(procs)
            where = ("its output is above" if i == 0 else
                     f"it said: {last_line(files[i - 1])!r}")
            print("error: " + what_is_kept(
                run_dir, len(procs), f"worker {i} ({addresses[i]}, pid {procs[i].pid}) "
                f"{describe(codes[i])}; stopped the other workers ({where})", fresh=True),
                file=sys.stderr, flush=True)
            return codes[i] if codes[i] > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        if codes[0] == 0:  # the chief is done: the others leave within the peer timeout
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > peer_timeout:
                late = [i for i, c in enumerate(codes) if c is None]
                stop(procs)
                print(f"error: workers {late} did not exit {peer_timeout:g} s after the chief "
                      "finished", file=sys.stderr, flush=True)
                return 1
        time.sleep(POLL_SECONDS)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
