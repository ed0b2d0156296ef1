"""Training inside a study: the model's recipe with overrides (`train_config`), its dataset
(`load`), and `fit` with the training package's recipe machinery, recording each epoch
(`EpochRecorder`)."""

from __future__ import annotations

import argparse
import time

import zoo
from analysis.study_files import Study
from training import data, modeling, precision
from training.config import TrainConfig, resolve_config


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
