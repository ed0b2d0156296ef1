"""What every study shares: its command line, its report (PNGs + one JSON with every plotted
number, the config, the precisions and the cost), progress lines, small training helpers built on
`training.modeling.compile_model` and `training.data`'s pipelines, float32 evaluation, and the
one rank correlation.

Measurements run in a stated precision whatever policy trained the model: float32 (float64 where
a study says so), on `training.modeling.measurement_copy` of a mixed-precision model
(docs/ARCHITECTURE.md, "Precision"). Each JSON records both: `precision: {"training": policy,
"measurement": dtype}`.
"""

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
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import zoo  # noqa: E402
from serving import quiet
from training import data, modeling, precision  # noqa: E402
from training.cli_types import (  # noqa: E402,F401  (the studies' flag types live there)
    MAX_SEED,
    OneLineParser,
    fraction,
    integer,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    real,
    seed_value,
)
from training.config import (  # noqa: E402
    ConfigError,
    TrainConfig,
    resolve_config,
    write_json_atomic,
)

DEFAULT_OUT = Path("reports")
# What a --quick run says of every claim: smoke-size runs check that a study works; they are too
# small to decide whether a report's claim holds.
SMOKE_VERDICT = "not decided at smoke size"
# The exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 128 + signal.SIGINT


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


class DivergedError(Exception):
    """A study produced a non-finite number: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- command line


# A bad flag or value is one line, `error: ...`, exit status 2 (docs/ARCHITECTURE.md,
# "Conventions"), not a usage block: the same parser as training's.
ArgumentParser = OneLineParser





def run_seeds(args: argparse.Namespace, n: int, flag: str = "--seeds") -> list[int]:
    """The seeds of a study's n runs: --seed, --seed + 1, ..., refused if the last would pass
    MAX_SEED (keras.utils.set_random_seed would fail mid-study)."""
    last = args.seed + n - 1
    if last > MAX_SEED:
        raise UsageError(f"--seed {args.seed} with {flag} {n} needs seeds up to {last}; seeds "
                         f"go up to {MAX_SEED} (2**32-1)")
    return list(range(args.seed, last + 1))


def build_parser(name: str, description: str, default_model: str | None = None,
                 model_help: str = "a registered zoo model") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=f"python -m analysis.{name}", description=description)
    quiet.add_verbose_flag(p)
    g = p.add_argument_group("what to study")
    if default_model is not None:
        g.add_argument("--model", default=default_model,
                       help=f"{model_help} (default: %(default)s)")
    g.add_argument("--precision", choices=precision.CHOICES, default="auto",
                   help="dtype policy for training; curvature always runs in float32/float64 "
                   "(default: %(default)s)")
    r = p.add_argument_group("run size and repeatability")
    r.add_argument("--quick", action="store_true",
                   help="shrink everything to seconds (tests, smoke checks)")
    r.add_argument("--seed", type=seed_value, default=0,
                   help=f"seed of every random choice, 0 to {MAX_SEED} (2**32-1); a study of N "
                   "runs uses --seed to --seed + N - 1 (default: 0)")
    o = p.add_argument_group("where things go")
    o.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"report root; this study writes OUT/{name}/ (default: %(default)s)")
    o.add_argument("--data-dir", type=Path, help=f"where datasets are (also ${data.ENV_DATA_DIR})")
    g.add_argument("--models-from", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file registering models of your own; "
                        "repeatable (as python -m training.train --models-from)")
    return p


def run(main: Callable[[argparse.Namespace], dict], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> int:
    """Parse, run, print where the report went; user mistakes become one line and status 2.

    Ctrl-C (SIGINT) at any point is one line and status 130: a study interrupted before its
    `finish` swapped the new report in leaves the previous one as it was (its temporary
    directory is removed); any other exit removes it too."""
    args = parser.parse_args(argv)
    started = len(_STARTED)
    try:
        import tensorflow as tf

        # Studies build many models on purpose; TF's "retracing" advice is noise here.
        tf.get_logger().setLevel("ERROR")
        zoo.load_plugins(args.models_from)
        result = main(args)
        print(f"report: {result['json']}")
        return 0
    # Only errors that explain themselves; any other exception is a bug and keeps its traceback.
    except (UsageError, DivergedError, ConfigError, zoo.UnknownModelError, zoo.PluginError,
            data.DataSourceError, precision.PrecisionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        studies = _STARTED[started:]
        done = [s for s in studies if s.committed]
        where = (f" after {done[0].final_dir} was complete" if done else
                 f": nothing written, {studies[0].final_dir} is as it was" if studies else "")
        print(f"interrupted{where}", file=sys.stderr)
        return INTERRUPTED_STATUS
    finally:
        for study in _STARTED[started:]:
            study.abort()
        del _STARTED[started:]


def check_model(name: str, task: str | None = None, dataset: str | None = None) -> zoo.ModelSpec:
    spec = zoo.get_spec(name)
    if task and spec.task != task:
        fits = ", ".join(n for n in zoo.list_models() if zoo.get_spec(n).task == task)
        raise UsageError(f"{name} is a {spec.task} model; this study needs a {task} model "
                         f"({fits})")
    if dataset and dataset not in spec.datasets:
        fits = ", ".join(n for n in zoo.list_models() if dataset in zoo.get_spec(n).datasets)
        raise UsageError(f"{name} does not train on {dataset}; models that do: {fits}")
    return spec


# ----------------------------------------------------------------------------- report


# Every Study started in this process; `run` aborts those of its own call left unfinished.
_STARTED: list[Study] = []


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
        _STARTED.append(self)
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


def band(ax, x, runs: np.ndarray, label: str, color=None, log: bool = False):
    """Mean line and min-max band (plus +-1 std, darker) of runs (n_runs, n_points)."""
    runs = np.asarray(runs, dtype=float)
    mean = np.exp(np.log(runs).mean(0)) if log else runs.mean(0)
    (line,) = ax.plot(x, mean, label=f"{label} (n={len(runs)})", color=color)
    c = line.get_color()
    ax.fill_between(x, runs.min(0), runs.max(0), color=c, alpha=0.15, linewidth=0)
    if not log and len(runs) > 1:
        sd = runs.std(0)
        ax.fill_between(x, mean - sd, mean + sd, color=c, alpha=0.2, linewidth=0)
    return {"label": label, "mean": mean, "min": runs.min(0), "max": runs.max(0),
            "std": runs.std(0)}


# ----------------------------------------------------------------------------- training


def train_config(model: str, args: argparse.Namespace, seed: int | None = None,
                 dataset_size: int | None = None, **overrides) -> TrainConfig:
    """The model's recipe with overrides, precision resolved exactly as the train CLI does."""
    resolved = precision.choose(args.precision)
    spec = zoo.get_spec(model)
    if dataset_size is None:
        dataset_size = 4096 if spec.dataset == "sinc" else 60000
    return resolve_config(
        model,
        precision_requested=resolved.requested,
        precision=resolved.policy,
        precision_reason=resolved.reason,
        train_size=dataset_size,
        seed=args.seed if seed is None else seed,
        **overrides,
    )


def load(name: str, args: argparse.Namespace) -> data.Dataset:
    return data.load_dataset(name, getattr(args, "data_dir", None), seed=args.seed)


class EpochRecorder:
    """A Keras callback recording per-epoch metrics and wall time, and calling `on_epoch`.

    train_* are Keras' running means over the epoch, in the training policy (what the optimiser
    saw); test_* come from `evaluate(model)` (a float32 `modeling.TestEvaluator`), after the
    epoch's `seconds` of training, and take `eval_seconds`."""

    def __new__(cls, *a, **k):
        import keras

        class _Recorder(keras.callbacks.Callback):
            def __init__(self, on_epoch=None, study=None, label="", evaluate=None):
                super().__init__()
                self.records: list[dict] = []
                self.on_epoch, self.evaluate = on_epoch, evaluate
                self.study, self.label = study, label

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                rec = {"epoch": epoch + 1, "seconds": time.perf_counter() - self._t0}
                rec.update({f"train_{k}": float(v) for k, v in (logs or {}).items()})
                if self.evaluate is not None:
                    t0 = time.perf_counter()
                    rec.update({f"test_{k}": v for k, v in self.evaluate(self.model).items()})
                    rec["eval_seconds"] = time.perf_counter() - t0
                self.records.append(rec)
                if self.on_epoch:
                    self.on_epoch(epoch + 1, self.model)
                if self.study:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in rec.items() if k != "epoch")
                    self.study.log(f"{self.label} epoch {epoch + 1}: {shown}")

        return _Recorder(*a, **k)


def fit(config: TrainConfig, ds: data.Dataset, study: Study | None = None, label: str = "",
        on_epoch=None, validate: bool = True, model=None, build=None):
    """Compile with the training package's recipe machinery and fit; returns (model, records).

    `model`: an already compiled model to go on training; `build()`: makes the uncompiled
    model instead of the zoo's (called after seeding, so its initialisation is repeatable).
    `on_epoch(epoch, model)` is also called once with epoch 0 before training (the init).
    `validate`: test metrics after each epoch, in float32 whatever the policy (not fit's own
    validation, which would run in the policy)."""
    import keras

    from training.modeling import compile_model

    precision.apply(config.precision)
    keras.utils.set_random_seed(config.seed)
    if model is None:
        model = compile_model(config, build() if build else None)
    if on_epoch:
        on_epoch(0, model)
    if study is not None:  # what ran, in the JSON's config: --quick overrides flags given
        ran = study.config.setdefault("ran", {})
        for key in ("epochs", "steps_per_epoch", "batch_size", "train_limit", "test_limit"):
            if getattr(config, key) not in ran.setdefault(key, []):
                ran[key].append(getattr(config, key))
    evaluate = modeling.TestEvaluator(config, ds) if validate else None
    recorder = EpochRecorder(on_epoch=on_epoch, study=study, label=label, evaluate=evaluate)
    model.fit(
        data.train_pipeline(ds, config.batch_size, config.seed, config.train_limit),
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=[recorder],
        shuffle=False,
        verbose=0,
    )
    if study:
        study.count("training_steps", config.epochs * config.steps_per_epoch)
    return model, recorder.records


# ----------------------------------------------------------------------------- measuring


def measured(model):
    """What a measurement runs on: the model itself if it computes in float32 or float64
    throughout, else its float32 copy (`modeling.measurement_copy`; weights copied, not shared)."""
    if modeling.model_dtype(model) in ("float32", "float64"):
        return model
    return modeling.measurement_copy(model, modeling.MEASUREMENT_DTYPE)


def evaluate(model, x, y, task: str, batch_size: int = 2000, as_trained: bool = False) -> dict:
    """Loss (and accuracy for classifiers) of a model on arrays: the model's outputs in float32
    (float64 for a float64 model) on `measured(model)`, the mean loss in float64.

    `as_trained=True` runs the model as it is, in the policy it trained in: informational only
    (it differs from the measurement under a mixed policy), never to be compared as equal."""
    import keras

    model = model if as_trained else measured(model)
    losses, correct = [], 0
    loss_fn = keras.losses.get("sparse_categorical_crossentropy" if task == "classification"
                               else "mse")
    for i in range(0, len(x), batch_size):
        xb = np.asarray(x[i:i + batch_size], dtype=np.float32)
        yb = y[i:i + batch_size]
        p = np.asarray(model(xb, training=False), dtype=np.float64)
        losses.append(np.asarray(loss_fn(yb, p), dtype=np.float64).reshape(len(xb), -1).mean(1))
        if task == "classification":
            correct += int((p.argmax(1) == yb).sum())
    out = {"loss": float(np.concatenate(losses).mean())}
    if task == "classification":
        out["accuracy"] = correct / len(x)
    return out


def pca(points: np.ndarray, k: int = 2, center: np.ndarray | None = None) -> dict:
    """PCA of row vectors by SVD: `components` (k, n) unit rows, `projected` (m, k), and the
    `explained` variance ratio of every component (not only the first k), largest first.
    `center` defaults to the mean; trajectories may centre on their end point instead."""
    points = np.asarray(points, dtype=np.float64)
    c = points.mean(0) if center is None else np.asarray(center, dtype=np.float64)
    _, s, vt = np.linalg.svd(points - c, full_matrices=False)
    var = s ** 2
    return {"center": c, "components": vt[:k], "projected": (points - c) @ vt[:k].T,
            "explained": var / var.sum() if var.sum() > 0 else var}


def correlation(a, b, method: str = "spearman") -> float | None:
    """Spearman's rank correlation (ties get their average rank) or Pearson's, by scipy.stats.
    None (JSON null) when undefined: fewer than 3 pairs, or either side constant. Reports are
    strict JSON, so a correlation is never NaN; and never a made-up 0."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correlation of shapes {a.shape} and {b.shape}")
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    fn = {"spearman": stats.spearmanr, "pearson": stats.pearsonr}[method]
    return float(fn(a, b).statistic)


def format_correlation(r: float | None) -> str:
    return "undefined (constant or too few values)" if r is None else f"{r:+.2f}"
