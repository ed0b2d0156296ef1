"""Crash-safe per-epoch checkpoints and metrics for a run directory.

After every epoch: the whole model (weights and optimizer state) goes to
`checkpoints/epoch-NNNN.keras` via a temporary file and a rename, then `state.json` is replaced
atomically to point at it, then older checkpoints are deleted. `state.json` is the commit point:
a kill -9 at any moment leaves either the previous state and its checkpoint, or the new ones.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from training import keras_files
from training.config import write_json_atomic
from training.run_folder import METRICS, STATE


class DamagedRunError(RuntimeError):
    """A run folder that cannot be resumed: one line naming the file and what to do."""


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE
    try:
        state = json.loads(path.read_text())
        if not {"epoch", "checkpoint", "history"} <= set(state):
            raise ValueError(f"missing {sorted({'epoch', 'checkpoint', 'history'} - set(state))}")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise DamagedRunError(f"{path} is damaged ({e}); the run cannot be resumed") from None


def committed_state(run_dir: Path) -> dict:
    """The last committed state of a run being resumed; DamagedRunError if there is none."""
    state = read_state(run_dir)
    if state is None:
        raise DamagedRunError(
            f"{run_dir} has no {STATE}: it was stopped before its first epoch ended, or the "
            "file is gone; nothing to resume from, so start a new run")
    return state


def resumed_at(state: dict | None) -> list[int]:
    """The epochs a run was resumed at, this resume included (kept in state.json from its next
    committed epoch on, and in the certificate): a resumed run trains the weights of the
    uninterrupted one, and says where it was resumed."""
    return [] if state is None else [*state.get("resumed", []), state["epoch"]]


def load_checkpoint(run_dir: Path, state: dict) -> keras.Model:
    """The model (and optimizer state) of a single-process run's committed checkpoint."""
    path = Path(run_dir) / state["checkpoint"]
    try:
        return keras_files.load_model(path)
    except keras_files.ModelFileError as e:
        raise DamagedRunError(f"checkpoint {e}; the run cannot be resumed") from None


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or weight: nothing of it may be saved or exported."""


class FiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite training loss (checked after every execution
    chunk, naming the step) or weight (checked at each epoch's end, before any checkpoint)."""

    def __init__(self, model_name: str):
        super().__init__()
        self.model_name = model_name

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise DivergedError(
                f"{self.model_name}: the training loss became {float(loss)} by step "
                f"{int(self.model.optimizer.iterations)}; nothing was exported (try a smaller "
                "--learning-rate)")

    def on_epoch_end(self, epoch, logs=None):
        for w in self.model.trainable_weights:
            if not np.all(np.isfinite(np.asarray(w))):
                raise DivergedError(
                    f"{self.model_name}: weight {w.path} is not finite after epoch {epoch + 1} "
                    f"(step {int(self.model.optimizer.iterations)}); nothing was exported")


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the checkpoint, state and metrics after each epoch; times training vs evaluation."""

    def __init__(self, run_dir: Path, history: list[dict] | None = None, evaluate=None,
                 resumed: list[int] | None = None):
        """`evaluate(model) -> {"loss": .., "accuracy": ..}`: the test metrics of each epoch;
        `resumed`: the epochs this run was resumed at, kept in state.json."""
        super().__init__()
        self.resumed = list(resumed or [])
        self.evaluate = evaluate
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.history = list(history or [])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._eval_seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            # Keras calls test-set metrics "val_*"; here the held-out set is the test set.
            name = key.replace("val_", "test_") if key.startswith("val_") else f"train_{key}"
            record[name] = float(value)
        if self.evaluate is not None:
            start = time.perf_counter()
            measured = self.evaluate(self.model)
            record.update({f"test_{k}": v for k, v in measured.items()})
            if logs is not None:  # the same dict the progress line and TensorBoard read next
                logs.update({f"val_{k}": v for k, v in measured.items()})
            self._eval_seconds += time.perf_counter() - start
        wall = time.perf_counter() - self._epoch_start
        record["train_seconds"] = wall - self._eval_seconds
        record["eval_seconds"] = self._eval_seconds
        self.history.append(record)

        name = f"epoch-{epoch + 1:04d}.keras"
        start = time.perf_counter()
        save_model_atomic(self.model, self.ckpt_dir / name)
        # Our own per-epoch cost, recorded so benchmarks can count it against us.
        record["checkpoint_seconds"] = time.perf_counter() - start
        # Metrics first, state last: state.json is the commit point, and resume rewrites
        # metrics.jsonl from it, so a kill between the two loses nothing.
        write_metrics(self.run_dir, self.history)
        write_json_atomic(
            self.run_dir / STATE,
            {"epoch": epoch + 1, "checkpoint": f"checkpoints/{name}", "history": self.history,
             "resumed": self.resumed},
        )
        for old in self.ckpt_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """Keras needs the .keras suffix, so the temporary is a hidden sibling ending in .keras."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    path = Path(run_dir) / METRICS
    tmp = path.with_name(f".{METRICS}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
    tmp.replace(path)


