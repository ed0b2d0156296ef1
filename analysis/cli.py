"""The studies' command line: every study's common flags (`build_parser`), its seeds
(`run_seeds`), its model check (`check_model`), and `run`, which turns a user's mistake into one
line and exit status 2 and Ctrl-C into one line and status 130 (docs/ARCHITECTURE.md,
"Conventions")."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import zoo
from analysis import study_files
from analysis.study_files import DEFAULT_OUT, DivergedError
from serving import quiet
from training import data, precision
from training.cli_types import MAX_SEED, OneLineParser, UsageError, seed_value
from training.config import ConfigError

# The exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 128 + signal.SIGINT


def run_seeds(args: argparse.Namespace, n: int, flag: str = "--seeds") -> list[int]:
    """The seeds of a study's n runs: --seed, --seed + 1, ..., refused if the last would pass
    MAX_SEED (keras.utils.set_random_seed would fail mid-study)."""
    last = args.seed + n - 1
    if last > MAX_SEED:
        raise UsageError(f"--seed {args.seed} with {flag} {n} needs seeds up to {last}; seeds "
                         f"go up to {MAX_SEED} (2**32-1)")
    return list(range(args.seed, last + 1))


# A bad flag or value is one line, `error: ...`, exit status 2 (docs/ARCHITECTURE.md,
# "Conventions"), not a usage block: the same parser as training's.
def build_parser(name: str, description: str, default_model: str | None = None,
                 model_help: str = "a registered zoo model") -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"python -m analysis.{name}", description=description)
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
    started = len(study_files.STARTED)
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
        studies = study_files.STARTED[started:]
        done = [s for s in studies if s.committed]
        where = (f" after {done[0].final_dir} was complete" if done else
                 f": nothing written, {studies[0].final_dir} is as it was" if studies else "")
        print(f"interrupted{where}", file=sys.stderr)
        return INTERRUPTED_STATUS
    finally:
        for study in study_files.STARTED[started:]:
            study.abort()
        del study_files.STARTED[started:]


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
