"""Shared fixtures: real MNIST (from whatever source the data chain finds), tiny training runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from training import data  # noqa: E402


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
    return data.load_dataset("mnist")


@pytest.fixture(autouse=True)
def _float32_policy():
    """Tests that switch the global dtype policy must not leak it into the next test."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env
