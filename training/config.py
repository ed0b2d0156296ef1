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
from training import data


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

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> TrainConfig:
        return cls.from_json(json.loads(Path(path).read_text()))


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
) -> TrainConfig:
    """Recipe defaults, then overrides. `steps` (total) wins over epochs: it is split into
    whole epochs of at most one pass over the data, rounding the total up."""
    spec = zoo.get_spec(model)
    r = spec.recipe
    dataset = dataset or spec.dataset
    if dataset not in spec.datasets:
        raise ValueError(
            f"{model} trains on {', '.join(spec.datasets)}, not {dataset!r}"
            + ("" if dataset in data.DATASETS else f" (known datasets: {', '.join(data.DATASETS)})")
        )
    batch_size = batch_size or r.batch_size
    per_pass = max(1, min(train_size, train_limit or train_size) // batch_size)
    steps_per_epoch = steps_per_epoch or r.steps_per_epoch or per_pass
    epochs = epochs or r.epochs
    if steps:
        steps_per_epoch = min(steps, per_pass)
        epochs = math.ceil(steps / steps_per_epoch)
    checks = (("epochs", epochs), ("steps", steps_per_epoch), ("batch size", batch_size))
    for label, value in checks:
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    return TrainConfig(
        model=model,
        task=spec.task,
        dataset=dataset,
        optimizer=r.optimizer,
        learning_rate=learning_rate or r.learning_rate,
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
    )


def write_json_atomic(path: Path, obj) -> None:
    """Readers (and a resume after kill -9) see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
