"""The resolved configuration of one training run: the spec's recipe with the CLI's overrides.

It is written to RUN_DIR/config.json before training starts and is the only input of `--resume`
and of `python -m training.export RUN_DIR`, so a run can always be explained and repeated.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import zoo
from training import data, data_paths


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str
    task: str
    dataset: str
    optimizer: str
    learning_rate: float
    schedule: str
    warmup_epochs: float
    batch_size: int
    epochs: int
    steps_per_epoch: int
    loss: str
    seed: int
    precision_requested: str
    precision: str
    precision_reason: str
    # Training examples used (None: all); for tests and quick looks.
    train_limit: int | None = None
    test_limit: int | None = None
    # --steps N: exactly N steps, the last epoch shorter if N is not a multiple (None: whole
    # epochs of steps_per_epoch).
    steps: int | None = None
    # The cluster shape: worker processes sharing each batch of `batch_size` (the global batch;
    # 1 is a single-process model.fit run, docs/ARCHITECTURE.md, "Multi-worker training").
    workers: int = 1
    # The plugin the model came from (zoo/plugins.py's record; None: the zoo's own), loaded
    # again by --resume and by python -m training.export.
    plugin: dict | None = None
    # A classifier's class count when the data has its own (training/data_paths.py; None:
    # the builder's default), and how a --dataset PATH is read again by --resume and evaluate.
    num_classes: int | None = None
    test_fraction: float | None = None
    skip_unreadable: bool = False
    # --init-from: the parent version or run (training/finetune.py's record), and which of
    # its layers train.
    init_from: dict | None = None
    freeze_backbone: bool = False
    trainable_from: str | None = None

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch

    def epoch_steps(self, epoch: int) -> int:
        """Steps of epoch `epoch` (0-based): steps_per_epoch, except a shorter last one."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def first_step(self, epoch: int) -> int:
        """The global step epoch `epoch` (0-based) starts at (only the last epoch is shorter)."""
        return epoch * self.steps_per_epoch

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> TrainConfig:
        try:
            d = json.loads(Path(path).read_text())
            missing = [f.name for f in dataclasses.fields(cls)
                       if f.name not in d and f.default is dataclasses.MISSING]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            return cls.from_json(d)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path} is not a valid run config ({e})") from None


def resolve_config(
    model: str,
    *,
    precision_requested: str,
    precision: str,
    precision_reason: str,
    train_size: int,
    dataset: str | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    workers: int = 1,
    num_classes: int | None = None,
    test_fraction: float | None = None,
    skip_unreadable: bool = False,
    init_from: dict | None = None,
    freeze_backbone: bool = False,
    trainable_from: str | None = None,
) -> TrainConfig:
    """Recipe defaults, then overrides (None means "not given"; 0 is refused, not ignored).
    `steps` is the exact total: split into the fewest epochs of at most one pass each."""
    spec = zoo.get_spec(model)
    r = spec.recipe
    dataset = dataset or spec.dataset
    from_path = data_paths.is_path(dataset)
    if from_path:  # read again by --resume and evaluate from anywhere
        dataset = str(Path(dataset).resolve())
    elif test_fraction is not None or skip_unreadable:
        raise ConfigError("--test-fraction and --skip-unreadable are for --dataset PATH")
    if not from_path and dataset not in spec.datasets:
        raise ConfigError(
            f"{model} trains on {', '.join(spec.datasets)}, not {dataset!r}"
            + ("" if dataset in data.DATASETS else f" (known datasets: {', '.join(data.DATASETS)})")
        )
    if init_from is not None and init_from["model"] != model:
        raise ConfigError(f"--init-from {init_from['path']} is a {init_from['model']}; it can "
                          f"start a {init_from['model']}, not a {model}")
    if (freeze_backbone or trainable_from) and init_from is None:
        raise ConfigError("--freeze-backbone and --trainable-from need --init-from")
    if init_from is not None and workers > 1:
        raise ConfigError("--init-from trains in one process; drop --workers")
    given = {"epochs": epochs, "steps": steps, "steps per epoch": steps_per_epoch,
             "batch size": batch_size, "train limit": train_limit, "test limit": test_limit}
    for label, value in given.items():
        if value is not None and value < 1:
            raise ConfigError(f"{label} must be at least 1, got {value}")
    if learning_rate is not None and not learning_rate > 0:
        raise ConfigError(f"learning rate must be positive, got {learning_rate}")
    if steps is not None and (epochs is not None or steps_per_epoch is not None):
        raise ConfigError("give --steps, or --epochs/--steps-per-epoch, not both")
    batch_size = batch_size if batch_size is not None else r.batch_size
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if batch_size % workers:  # every worker takes an equal slice of each global batch
        raise ConfigError(f"batch size {batch_size} does not split evenly over {workers} "
                          f"workers; give a --batch-size that is a multiple of {workers}")
    examples = min(train_size, train_limit or train_size)
    if batch_size > examples:  # an epoch would hold no batch at all
        raise ConfigError(f"batch size {batch_size} is larger than the {examples:,} training "
                          f"examples; give --batch-size {examples} or less")
    per_pass = examples // batch_size
    if steps is not None:
        epochs = math.ceil(steps / per_pass)
        steps_per_epoch = math.ceil(steps / epochs)
        epochs = math.ceil(steps / steps_per_epoch)  # 65 at 64 a pass: 33 + 32, not 33 + 33
    else:
        epochs = epochs if epochs is not None else r.epochs
        steps_per_epoch = steps_per_epoch or r.steps_per_epoch or per_pass
    return TrainConfig(
        model=model,
        task=spec.task,
        dataset=dataset,
        optimizer=r.optimizer,
        learning_rate=learning_rate if learning_rate is not None else r.learning_rate,
        schedule=r.schedule,
        warmup_epochs=r.warmup_epochs,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        loss=r.loss,
        seed=seed,
        precision_requested=precision_requested,
        precision=precision,
        precision_reason=precision_reason,
        train_limit=train_limit,
        test_limit=test_limit,
        steps=steps,
        workers=workers,
        plugin=zoo.origin(model),
        # The zoo's datasets keep the builder's default; a path's classes are its own.
        num_classes=num_classes if from_path and spec.task == "classification" else None,
        test_fraction=test_fraction,
        skip_unreadable=skip_unreadable,
        init_from=init_from,
        freeze_backbone=freeze_backbone,
        trainable_from=trainable_from,
    )


def epoch_groups(config: TrainConfig, initial_epoch: int):
    """(first, end, steps) for each run of epochs of equal length from `initial_epoch` on: the
    whole epochs, then a shorter last one. Each group trains on one pipeline of the run's seed
    started at its first global step (`first_step(first)`): the batches of an uninterrupted
    run, whatever epoch a resume starts from; the multi-worker path follows the same rule, so
    both see the same batches."""
    epoch = initial_epoch
    while epoch < config.epochs:
        steps = config.epoch_steps(epoch)
        last = epoch + 1
        while last < config.epochs and config.epoch_steps(last) == steps:
            last += 1
        yield epoch, last, steps
        epoch = last


class ConfigError(ValueError):
    """An override that cannot make a valid run; the message says which and why."""


def write_json_atomic(path: Path, obj) -> None:
    """Readers (and a resume after kill -9) see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
