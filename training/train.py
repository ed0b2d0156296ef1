"""Train a zoo model with its recipe, checkpoint every epoch, export the result.

    python -m training.train --list
    python -m training.train softmax_regression
    python -m training.train deep_cnn --epochs 2 --precision float32 --seed 7 --batch-size 256
    python -m training.train deep_cnn --resume runs/deep_cnn/20261122-101500-s0
    python -m training.train my_net --models-from my_models.py   # a model of your own
    python -m training.train deep_cnn --workers 2       # two local workers (tf.distribute)
    TF_CONFIG='{...}' python -m training.train deep_cnn  # one worker of a cluster (e.g. TFJob)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import zoo
from serving import quiet
from training import (
    checkpoints,
    cli_types,
    data,
    data_paths,
    finetune,
    interrupts,
    launcher,
    modeling,
    multiworker,
    precision,
    run_folder,
)
from training.cli_types import UsageError
from training.config import ConfigError, TrainConfig, epoch_groups, resolve_config
from training.export import ExportError
from training.summary import finish

DEFAULT_EXPORTS = Path("exported_models")
# Flags a resumed run cannot honour (its config.json decides): given with --resume, refused.
RECIPE_FLAGS = ("epochs", "steps", "steps_per_epoch", "batch_size", "learning_rate", "dataset",
                "precision", "seed", "run_dir", "train_limit", "test_limit", "test_fraction",
                "skip_unreadable", "init_from", "freeze_backbone", "trainable_from")
# Local workers a machine may start: each is a whole TensorFlow process, and more than two a
# CPU only share it (a cluster of more machines is TF_CONFIG's, e.g. a TFJob).
WORKERS_PER_CPU = 2


def build_parser() -> argparse.ArgumentParser:
    p = cli_types.OneLineParser(
        prog="python -m training.train",
        description="Train a zoo model with its default recipe (overridable), then export it.",
        allow_abbrev=False,  # --worker 2 would reach the workers as a second --workers
    )
    quiet.add_verbose_flag(p)
    p.add_argument("model", nargs="?", help="registered model name (see --list)")
    p.add_argument("--list", action="store_true", help="list every registered model and exit")
    p.add_argument("--models-from", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module (dotted name) or .py file that registers models with "
                        f"zoo.register; repeatable (also ${zoo.plugins.ENV_MODELS}; installed "
                        f"packages' entry points {zoo.plugins.ENTRY_POINT_GROUP} are loaded too)")

    r = p.add_argument_group("recipe overrides (default: the model's recipe)")
    r.add_argument("--epochs", type=int, help="number of epochs")
    r.add_argument("--steps", type=int,
                   help="exactly this many optimisation steps (the last epoch may be shorter)")
    r.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: one pass)")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    r.add_argument("--dataset", metavar="NAME_OR_PATH",
                   help=f"{', '.join(data.DATASETS)}, or a path: a folder of class subfolders "
                        "of images, or an .npz of x_train, y_train, x_test, y_test "
                        "(default: the model's own dataset)")
    r.add_argument("--test-fraction", type=float,
                   help="an image folder without train/ and test/: the share of each class "
                        "held out for test (default: 0.2)")
    r.add_argument("--skip-unreadable", action="store_true", default=None,
                   help="an image folder: train without the images that cannot be decoded "
                        "(the certificate lists them)")
    r.add_argument("--init-from", type=Path, metavar="VERSION_OR_RUN",
                   help="start from the weights of an exported version (its certificate "
                        "verified) or a finished run; a new head if the data has another "
                        "number of classes")
    r.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="with --init-from: train only the new head (or the last layer)")
    r.add_argument("--trainable-from", metavar="LAYER",
                   help="with --init-from: train LAYER and the layers after it only")
    r.add_argument("--precision", choices=precision.CHOICES, default=None,
                   help="dtype policy; auto picks by hardware (default: auto)")
    r.add_argument("--seed", type=cli_types.seed_value,
                   help="seed of every random choice, 0 to 2**32-1 (default: 0)")

    o = p.add_argument_group("where things go")
    o.add_argument("--run-dir", type=Path, help="run directory (default: runs/MODEL/TIME-sSEED)")
    o.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a stopped run from its last completed epoch")
    o.add_argument("--export-dir", type=Path, default=DEFAULT_EXPORTS,
                   help="model base path for the export (default: %(default)s)")
    o.add_argument("--no-export", action="store_true", help="train only")
    o.add_argument("--data-dir", type=Path, help=f"where datasets are (also ${data.ENV_DATA_DIR})")

    c = p.add_argument_group("beyond one machine (docs/ARCHITECTURE.md, \"Multi-worker training\")")
    c.add_argument("--workers", type=cli_types.positive_int, metavar="N",
                   help="train with N local worker processes on 127.0.0.1 "
                        "(MultiWorkerMirroredStrategy; --batch-size is the global batch); "
                        "with TF_CONFIG set, this process is one worker of that cluster instead")
    c.add_argument("--peer-timeout", type=cli_types.positive_float,
                   default=multiworker.DEFAULT_PEER_TIMEOUT,
                   metavar="SECONDS",
                   help="how long a worker waits for its peers to join, or for a lost peer's "
                        "heartbeat, before the run fails (default: %(default)g)")

    s = p.add_argument_group("small runs (tests, quick looks)")
    s.add_argument("--train-limit", type=int, help="use only the first N training examples")
    s.add_argument("--test-limit", type=int, help="evaluate on the first N test examples")
    return p


def list_models_table() -> str:
    rows = [("name", "task", "params", "dataset", "origin", "reference", "provenance")]
    for name in zoo.list_models():
        spec = zoo.get_spec(name)
        ref = spec.reference
        target = f"{ref.metric} {'>=' if ref.metric == 'accuracy' else '<='} {ref.target:g}"
        params = zoo.checked_model(name).count_params()
        rows.append((name, spec.task, f"{params:,}", "/".join(spec.datasets),
                     zoo.describe_origin(zoo.origin(name)), target, ref.provenance))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    worker = None
    try:
        zoo.load_plugins(args.models_from)
        if args.list:
            print(list_models_table())
            return 0
        worker = multiworker.Worker.from_env()
        if worker is not None and args.workers is not None:
            raise UsageError(f"--workers starts local workers, but {multiworker.TF_CONFIG} "
                             "already makes this process one worker of a cluster; drop one")
        if worker is None:  # a TF_CONFIG worker keeps TensorFlow's own SIGTERM handling
            interrupts.raise_on_sigterm()
        if worker is None and args.workers is not None and args.workers > 1:
            check_local_workers(args.workers)
            run_dir, chosen = prepare_launch(args, args.workers)
            return launcher.launch(args, sys.argv[1:] if argv is None else argv, run_dir, chosen)
        summary = run_from_args(args, worker)
    except (UsageError, zoo.UnknownModelError, zoo.PluginError, data.DataSourceError,
            ConfigError, ExportError, precision.PrecisionError, checkpoints.DivergedError,
            checkpoints.DamagedRunError, run_folder.RunBusyError, finetune.InitError,
            FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (multiworker.ClusterError, launcher.IsolationError) as e:  # the cluster, not the user
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, interrupts.Interrupted) as e:
        stopped = interrupts.as_interrupted(e)
        print(f"error: {stopped}", file=sys.stderr)
        if worker is not None:
            multiworker.leave(stopped.code)
        return stopped.code
    if summary is not None:  # None: a worker other than the chief, which writes no run
        print(format_summary(summary))
    if worker is not None:
        multiworker.leave(0)
    return 0


def check_local_workers(n: int) -> None:
    cpus = len(os.sched_getaffinity(0))
    if n > WORKERS_PER_CPU * cpus:
        raise UsageError(f"--workers {n}: this machine has {cpus} CPU(s), so at most "
                         f"{WORKERS_PER_CPU * cpus} local workers (each is a whole TensorFlow "
                         f"process); more machines join with {multiworker.TF_CONFIG}")


def check_request(args: argparse.Namespace, workers: int, writes: bool) -> None:
    """Every check of the command line that needs neither data nor TensorFlow: made before any
    worker starts (the launcher) or joins its cluster (a TF_CONFIG worker), so that a usage
    error is one line at once, never a cluster that starts and fails."""
    export_dir = None if args.no_export or not writes else args.export_dir
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in RECIPE_FLAGS if getattr(args, k) is not None]
        if given:
            raise UsageError(f"--resume continues a run with its own config.json; "
                             f"drop {', '.join(given)}")
        config_path = Path(args.resume) / "config.json"
        if not config_path.exists():
            raise UsageError(f"{args.resume} is not a run directory (no config.json)")
        config = TrainConfig.read(config_path)
        if args.model and args.model != config.model:
            raise UsageError(f"{args.resume} is a run of {config.model}, not {args.model}")
        if config.workers != workers:
            # The global batch is split in config.workers slices: another cluster would train
            # another run than the one config.json describes.
            how = (f"--workers {config.workers}" if config.workers > 1
                   else f"without --workers (and without {multiworker.TF_CONFIG})")
            raise UsageError(f"{args.resume} was trained by {config.workers} worker(s), not "
                             f"{workers}; resume it {how}")
        checkpoints.committed_state(args.resume)
        if writes:
            run_folder.check_run_free(args.resume)
            run_folder.check_destinations(None, export_dir)
        return
    if not args.model:
        raise UsageError("name a model to train (python -m training.train --list shows them)")
    spec = zoo.get_spec(args.model)
    if (args.dataset and args.dataset not in spec.datasets  # before any loading or download
            and not data_paths.is_path(args.dataset)):
        raise UsageError(f"{args.model} trains on {', '.join(spec.datasets)}, not {args.dataset}")
    batch = args.batch_size or spec.recipe.batch_size
    if batch % workers:
        raise ConfigError(f"batch size {batch} does not split evenly over {workers} workers; "
                          f"give a --batch-size that is a multiple of {workers}")
    if writes:
        # Before any data is loaded or trained.
        run_folder.check_destinations(args.run_dir, export_dir)
        if args.run_dir and not run_folder.fresh_folder(args.run_dir):
            raise UsageError(f"run directory {args.run_dir} is not empty; "
                             + (f"continue it with --resume {args.run_dir}, or "
                                if (args.run_dir / run_folder.STATE).exists() else "")
                             + "choose another --run-dir")


def load_data(name: str, data_dir: Path | None, seed: int, given) -> data.Dataset:
    """A zoo dataset, or the data at a path read for the model (`given`: the arguments or a
    run's config, for the model, --test-fraction and --skip-unreadable)."""
    spec = zoo.get_spec(given.model)
    return data_paths.load_dataset(name, data_dir, seed=seed, task=spec.task,
                             input_shape=spec.inputs.shape, test_fraction=given.test_fraction,
                             skip_unreadable=bool(given.skip_unreadable))


def resolve_from_args(args: argparse.Namespace, dataset: data.Dataset,
                      workers: int) -> TrainConfig:
    resolved = precision.choose(args.precision or "auto")
    return resolve_config(
        args.model,
        precision_requested=resolved.requested,
        precision=resolved.policy,
        precision_reason=resolved.reason,
        train_size=len(dataset.x_train),
        dataset=args.dataset,
        epochs=args.epochs,
        steps=args.steps,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=0 if args.seed is None else args.seed,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        workers=workers,
        num_classes=dataset.num_classes or None,
        test_fraction=args.test_fraction,
        skip_unreadable=bool(args.skip_unreadable),
        init_from=finetune.describe_parent(args.init_from) if args.init_from else None,
        freeze_backbone=bool(args.freeze_backbone),
        trainable_from=args.trainable_from,
    )


def prepare_launch(args: argparse.Namespace, n: int) -> tuple[Path, Path | None]:
    """(run directory, the --run-dir to add to the workers' arguments or None), after every
    check a worker would make of the command line, its data and its recipe: a usage error is
    one line here, before any worker starts."""
    check_request(args, n, writes=True)
    if args.resume:
        config = TrainConfig.read(Path(args.resume) / "config.json")
        # Found (and fetched into the cache if need be) here: the workers' network has no way out.
        load_data(config.dataset, args.data_dir, config.seed, config)
        return Path(args.resume), None
    spec = zoo.get_spec(args.model)
    dataset = load_data(args.dataset or spec.dataset, args.data_dir,
                        0 if args.seed is None else args.seed, args)
    resolve_from_args(args, dataset, n)  # the recipe's own checks (ConfigError)
    if args.run_dir:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        return args.run_dir, None
    run_dir = run_folder.new_run_dir(args.model, 0 if args.seed is None else args.seed)
    return run_dir, run_dir


def run_from_args(args: argparse.Namespace, worker: multiworker.Worker | None = None) -> dict:
    """Train as the arguments say; `worker`: this process is one worker of that cluster (it
    joins it after the checks of the command line, before any other TensorFlow op), and only
    the chief writes the run."""
    writes = worker is None or worker.is_chief
    check_request(args, worker.size if worker else 1, writes)
    if worker is not None:
        worker = (worker, multiworker.connect(worker, args.peer_timeout))
    export_dir = None if args.no_export or not writes else args.export_dir
    if args.resume:
        # Every worker reads it (a finished, exported run is done for all), the chief writes it.
        return resume(args.resume, export_dir=export_dir, data_dir=args.data_dir,
                      model=args.model, worker=worker)
    spec = zoo.get_spec(args.model)
    seed = 0 if args.seed is None else args.seed
    dataset = load_data(args.dataset or spec.dataset, args.data_dir, seed, args)
    config = resolve_from_args(args, dataset, worker[0].size if worker else 1)
    model = None if worker else modeling.build_model(config, dataset)  # a plugin's is checked
    if not writes:  # a worker other than the chief: its checkpoints go to a temporary folder
        return train(config, None, dataset, export_dir=None, worker=worker)
    if args.run_dir:
        run_dir = args.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = run_folder.new_run_dir(config.model, config.seed)
    return train(config, run_dir, dataset, export_dir=export_dir, worker=worker, model=model)


def resume(run_dir: Path, export_dir: Path | None, data_dir: Path | None = None,
           model: str | None = None, worker=None) -> dict | None:
    """Continue a run with the config it was started with (recipe flags are not re-read)."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    config = TrainConfig.read(config_path)
    zoo.plugins.load_recorded(config.plugin)
    if model and model != config.model:
        raise UsageError(f"{run_dir} is a run of {config.model}, not {model}")
    dataset = load_data(config.dataset, data_dir, config.seed, config)
    return train(config, Path(run_dir), dataset, export_dir=export_dir, resuming=True,
                 worker=worker)


def train(config: TrainConfig, run_dir: Path | None, dataset: data.Dataset,
          export_dir: Path | None = DEFAULT_EXPORTS, resuming: bool = False,
          worker=None, model=None) -> dict | None:
    """Train (or continue) one run and return its summary. The library entry point.
    `model`: a fresh model to start from (default: modeling.build_model's).

    `worker`: (multiworker.Worker, strategy) to train as one worker of a cluster; only the
    chief writes `run_dir` and returns the summary (the others: None; their run_dir, read when
    resuming, is None otherwise)."""
    writes = worker is None or worker[0].is_chief
    if not writes:
        return _train(config, None if run_dir is None else Path(run_dir), dataset, None,
                      resuming, worker)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_folder.hold_run(run_dir)  # one writer per run folder, until this returns
    try:
        if resuming and (swept := run_folder.sweep_temporaries(run_dir)):
            print(f"[resume] removed what an interrupted write left: {', '.join(swept)}",
                  file=sys.stderr)
        return _train(config, run_dir, dataset, export_dir, resuming, worker, model)
    except BaseException as e:
        committed = (run_dir / run_folder.STATE).exists()
        if not committed and not resuming:  # nothing to continue from: leave no half-made run
            shutil.rmtree(run_dir, ignore_errors=True)
        stopped = interrupts.as_interrupted(e)
        if stopped is not None:
            raise interrupts.Interrupted(stopped.signum, interrupted_message(
                stopped, run_dir, committed, config)) from None
        raise
    finally:
        os.close(lock)


def interrupted_message(stopped: interrupts.Interrupted, run_dir: Path, committed: bool,
                        config: TrainConfig) -> str:
    name = stopped.signal_name
    if not committed:
        return f"interrupted by {name} before the first epoch ended; removed {run_dir}"
    epoch = checkpoints.read_state(run_dir)["epoch"]
    return (f"interrupted by {name}; {run_dir} keeps epoch {epoch}/{config.epochs}: continue "
            f"with: {run_folder.resume_command(run_dir, config.workers)}")


def _train(config: TrainConfig, run_dir: Path | None, dataset: data.Dataset,
           export_dir: Path | None, resuming: bool, worker, model=None) -> dict | None:
    import keras

    writes = worker is None or worker[0].is_chief
    precision.apply(config.precision)
    keras.utils.set_random_seed(config.seed)
    print(f"[precision] {config.precision} ({config.precision_requested}: "
          f"{config.precision_reason})", file=sys.stderr)
    if warning := precision.emulation_warning(config.precision, precision.detect_hardware()):
        print(f"[precision] {warning}", file=sys.stderr)

    state = None
    if resuming:
        # No state.json: nothing to continue from (a run stopped before its first epoch ended,
        # or a damaged folder); starting over here would silently throw away what is left.
        state = checkpoints.committed_state(run_dir)
        done = (run_folder.published_export(run_dir, export_dir)
                if state["epoch"] >= config.epochs else None)
        if done:
            copy = (f" (a copy of {done['run_dir']})"
                    if Path(done["run_dir"]).resolve() != Path(run_dir).resolve() else "")
            print(f"[resume] {run_dir}{copy} is finished and exported as {done['export']}",
                  file=sys.stderr)
            return done if writes else None
        if writes:  # in case a kill left it one epoch behind
            checkpoints.write_metrics(run_dir, state["history"])
        print(f"[resume] {run_dir} from epoch {state['epoch']}/{config.epochs}", file=sys.stderr)
    elif writes:
        config.write(run_dir / "config.json")
    if worker is not None:
        return multiworker.train(*worker, config, run_dir, dataset, state, export_dir)

    history: list[dict] = []
    initial_epoch = 0
    if state is not None:
        model = checkpoints.load_checkpoint(run_dir, state)
        try:  # another model's checkpoint is not resumed
            modeling.check_against_spec(model, config,
                                        f"checkpoint {run_dir / state['checkpoint']}")
        except modeling.SpecMismatchError as e:
            raise checkpoints.DamagedRunError(str(e)) from None
        initial_epoch, history = state["epoch"], state["history"]
    else:
        model = modeling.compile_model(config, model or modeling.build_model(config, dataset))

    fit_model(model, config, dataset, run_dir, history, initial_epoch,
              checkpoints.resumed_at(state))
    state = checkpoints.read_state(run_dir)
    history = state["history"] if state else history
    checkpoints.save_model_atomic(model, run_dir / "model.keras")
    return finish(model, config, dataset, run_dir, history, export_dir,
                  (state or {}).get("resumed", []))



def fit_model(model, config: TrainConfig, dataset: data.Dataset, run_dir: Path,
              history: list[dict], initial_epoch: int, resumed: list[int]) -> None:
    """model.fit over the remaining epochs: the whole ones in one call, then a shorter last
    epoch (--steps N not a multiple of an epoch) in a second call, so exactly N steps run."""
    import keras

    callbacks = [
        checkpoints.FiniteGuard(config.model),  # first: no NaN reaches a checkpoint or export
        # Test metrics in float32 whatever the policy (fit's validation would use the policy).
        checkpoints.EpochCheckpoint(run_dir, history, modeling.TestEvaluator(config, dataset),
                                    resumed),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), profile_batch=0),
    ]
    for epoch, last, steps in epoch_groups(config, initial_epoch):
        modeling.set_epoch_steps(model, steps)
        model.fit(
            # From this group's first global step: a resumed run trains on the batches the
            # uninterrupted one would (not epoch 1's again).
            data.train_pipeline(dataset, config.batch_size, config.seed, config.train_limit,
                                start_step=config.first_step(epoch)),
            epochs=last,
            initial_epoch=epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles, seeded
            # A progress bar on a terminal, one line per epoch in logs and CI.
            verbose=1 if sys.stdout.isatty() else 2,
        )


def format_summary(s: dict) -> str:
    ref = s["reference"]
    verdict = {True: "met", False: "NOT met"}.get(
        ref["met"], f"not judged: {ref.get('not_measured') or 'not applicable'}")
    lines = [
        f"model        {s['model']} ({s['parameters']:,} parameters, "
        f"{s['config']['precision']})",
        f"trained      {TrainConfig.from_json(s['config']).total_steps} steps of "
        f"{s['config']['batch_size']} in {s['epochs_completed']} epochs, "
        f"{s['train_seconds']:.1f} s" + "".join(
            f", resumed at epoch {e}" for e in s.get("resumed_at_epochs", [])),
        "test         " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(s["test"].items())),
        f"reference    {ref['metric']} {ref['value']:.4f} vs target {ref['target']:g}: {verdict}",
        f"run dir      {s['run_dir']}",
    ]
    if s["export"]:
        lines.append(f"exported     {s['export']}")
    return "\n".join(lines)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: the launcher raises
    # training.train's exceptions, which this copy's classes would not catch.
    from training import train as _module

    sys.exit(_module.main())
