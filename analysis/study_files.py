"""A study's files: `Study` builds OUT/NAME/ (PNGs + NAME.json with every plotted number, the
config, the precisions and the cost) beside the previous report and swaps it in whole when it is
complete; `to_json` makes the JSON strict (a non-finite number is `DivergedError`)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training import modeling, precision  # noqa: E402
from training.cli_types import UsageError  # noqa: E402
from training.config import write_json_atomic  # noqa: E402

DEFAULT_OUT = Path("reports")
# What a --quick run says of every claim: smoke-size runs check that a study works; they are too
# small to decide whether a report's claim holds.
SMOKE_VERDICT = "not decided at smoke size"


class DivergedError(Exception):
    """A study produced a non-finite number: printed as one line, exit status 2."""


# Every Study started in this process; `analysis.cli.run` aborts those of its own call left
# unfinished.
STARTED: list[Study] = []


class Study:
    """One study run: output directory, cost counters, progress, figures, the JSON.

    `measurement`: the dtype its losses, gradients and curvature are measured in (float32, or
    float64 where the study says so); `training_policy`: the policy its models train in, by
    default `--precision` resolved as the train CLI does. Both go to the JSON's `precision`;
    a study may still change `self.precision` before `finish`.

    The report is built in a hidden temporary sibling `OUT/.NAME.tmp-PID-*` (`out_dir` while
    the study runs) and swapped in whole by `finish`: the old OUT/NAME is renamed aside, the new
    one renamed in, the old one removed. So OUT/NAME is always a complete report, the previous
    one until the new one is, whatever stops the study (Ctrl-C is held back between the two
    renames; a run killed outright there has its previous report put back by the next run's
    `_sweep`); `abort` removes the temporary."""

    def __init__(self, name: str, args: argparse.Namespace, *,
                 measurement: str = modeling.MEASUREMENT_DTYPE,
                 training_policy: str | None = None, **config):
        self.name = name
        if training_policy is None:
            resolved = precision.choose(args.precision)
            training_policy = resolved.policy
            why = f"--precision {args.precision}: {resolved.reason}"
        else:
            why = "set by the study (--precision unused)"
        self.precision = {"training": training_policy, "training_reason": why,
                          "measurement": measurement}
        self.root = Path(args.out)
        self.final_dir = self.root / name
        self.committed = False
        # The folders this study creates above its report (to remove again if it is aborted).
        self._made = [d for d in (self.root, *self.root.parents) if not d.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self.final_dir.exists() and not self.final_dir.is_dir():
                raise UsageError(f"--out {self.root}: {self.final_dir} is not a directory")
            with _locked(self.root):
                _sweep(self.root, name)
                self.out_dir = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-",
                                                     dir=self.root))
        except OSError as e:
            self._remove_made()
            raise UsageError(f"--out {self.root}: cannot write a report there "
                             f"({e.strerror or e})") from None
        STARTED.append(self)
        self.config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        self.config.update(config)
        self.costs: Counter = Counter()
        self.figures: list[dict] = []
        self.start = time.perf_counter()
        self._phases: dict[str, tuple[float, int]] = {}
        self.log(f"writing to {self.final_dir} (built in {self.out_dir.name}, swapped in "
                 "when complete)")

    def count(self, kind: str, n: int = 1) -> None:
        """Record work done: 'loss_evaluations', 'gradients', 'hvps', 'training_steps'..."""
        self.costs[kind] += int(n)

    def log(self, message: str) -> None:
        print(f"[{self.name} {time.perf_counter() - self.start:7.1f}s] {message}",
              file=sys.stderr, flush=True)

    def progress(self, i: int, n: int, message: str = "", phase: str = "") -> None:
        """Progress line for item i (1-based) of n of a phase, with the phase's time left."""
        now = time.perf_counter()
        if i <= 1 or phase not in self._phases:
            self._phases[phase] = (now, i - 1)
        t0, i0 = self._phases[phase]
        # The first item of a phase has no timing yet (it set the phase's clock).
        eta = (now - t0) / (i - i0) * (n - i) if i > i0 and now > t0 else None
        left = f"  (~{eta:.0f}s left)" if eta is not None and i < n else ""
        self.log(f"{phase + ' ' if phase else ''}{i}/{n} {message}{left}")

    def savefig(self, fig, filename: str, caption: str) -> Path:
        path = self.out_dir / filename
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.figures.append({"file": filename, "caption": caption})
        return path

    def finish(self, results: dict, claims: list[dict] | None = None) -> dict:
        """Write OUT/NAME/NAME.json. `claims`: [{report_figure, claim, measured, verdict}] for
        the page; `verdict` (optional) is what a full run decides; a --quick run's is always
        SMOKE_VERDICT, whatever the study said."""
        wall = time.perf_counter() - self.start
        quick = bool(self.config.get("quick"))
        claims = [{**c, "verdict": SMOKE_VERDICT if quick else c.get("verdict")}
                  for c in claims or []]
        doc = {
            "study": self.name,
            "config": self.config,
            "precision": self.precision,
            "results": results,
            "figures": self.figures,
            "claims": claims,
            "cost": {"wall_seconds": round(wall, 3), **dict(self.costs)},
            "environment": environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # write_json_atomic uses allow_nan (default); sanitise first so NaN fails loudly here.
        clean = to_json(doc)
        json.dumps(clean, allow_nan=False)
        write_json_atomic(self.out_dir / f"{self.name}.json", clean)
        self._swap_in()
        path = self.final_dir / f"{self.name}.json"
        self.log(f"done in {wall:.1f}s; {path}")
        return {"json": str(path), "doc": clean}

    def _swap_in(self) -> None:
        """OUT/NAME becomes the finished temporary directory, by two renames under a lock on
        OUT (another run of the same study swaps after, not between), with SIGINT held back
        between them so that Ctrl-C cannot leave OUT/NAME missing."""
        old = None
        with _locked(self.root):
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                if self.final_dir.exists():
                    old = self.root / f".{self.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    os.rename(self.final_dir, old)
                os.rename(self.out_dir, self.final_dir)
                self.out_dir, self.committed = self.final_dir, True
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if old is not None:
            shutil.rmtree(old)

    def abort(self) -> None:
        """Remove the unfinished report (the previous one, if any, was never touched)."""
        if not self.committed:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            self._remove_made()

    def _remove_made(self) -> None:
        for d in self._made:  # deepest first; stops at the first that is not empty
            try:
                d.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive flock on the directory itself (nothing is written to hold it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sweep(root: Path, name: str) -> None:
    """Leftovers of runs of this study killed outright (SIGKILL, power loss): their
    temporaries are removed; a previous report renamed aside by a run killed between its two
    renames is put back. The process id in the name says whether its run is still alive."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-(\d+)-\w+")
    for path in sorted(root.iterdir()):
        m = pattern.fullmatch(path.name)
        if not m or _alive(int(m[2])):
            continue
        if m[1] == "old" and not (root / name).exists():
            os.rename(path, root / name)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def to_json(obj):
    """numpy scalars/arrays -> plain Python; non-finite floats are refused."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if not math.isfinite(f):
            raise DivergedError(f"non-finite number {f} in a report; the study diverged")
        return f
    return obj


def environment() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "machine": platform.machine()}
