"""Tiny real training runs for tests: a few steps on a slice of the real data."""

from __future__ import annotations

from pathlib import Path

from training import data, precision
from training.config import resolve_config
from training.train import train

TRAIN_LIMIT = 2048
TEST_LIMIT = 256


def tiny_config(model: str, *, steps: int = 8, batch_size: int = 32, seed: int = 0,
                policy: str = "auto", dataset_name: str | None = None, **overrides):
    """`policy` "auto" resolves as the CLI does ($ZOO_PRECISION included), so that the
    forced-bf16 pass of the suite trains these runs in mixed_bfloat16 on every machine."""
    ds = dataset_name or _default_dataset(model)
    resolved = precision.choose(policy)
    return resolve_config(
        model,
        precision_requested=resolved.requested,
        precision=resolved.policy,
        precision_reason=resolved.reason,
        train_size=TRAIN_LIMIT,
        dataset=ds,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        **{"train_limit": TRAIN_LIMIT, "test_limit": TEST_LIMIT, **overrides},
    )


def _default_dataset(model: str) -> str:
    import zoo

    return zoo.get_spec(model).dataset


def tiny_run(model: str, run_dir: Path, dataset: data.Dataset, export_dir: Path | None = None,
             **kw) -> dict:
    config = tiny_config(model, **kw)
    precision.apply(config.precision)
    return train(config, run_dir, dataset, export_dir=export_dir)
