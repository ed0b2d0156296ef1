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


@pytest.fixture(autouse=True)
def _stop_the_servers_a_test_started():
    """A server started by a test (or its function-scoped fixtures) is stopped when the test
    ends, pass or fail, so that no process outlives its test."""
    from tests import serving_fixtures

    before = len(serving_fixtures.STARTED)
    yield
    for server in serving_fixtures.STARTED[before:]:
        server.stop()
    del serving_fixtures.STARTED[before:]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env
