"""What every study shares: the one rank correlation, the precisions and the smoke-size verdict
each JSON states, and float32 measurement of a model trained in a mixed policy."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from analysis import cli, grad_norm, measures, study_files
from tests.helpers import tiny_config
from training import precision


def test_spearman_gives_ties_their_average_rank():
    # ranks of b with ties averaged: [2, 2, 2, 4]; Pearson of those with [1, 2, 3, 4] = sqrt(0.6)
    assert measures.correlation([1, 2, 3, 4], [0.2, 0.2, 0.2, 0.5]) == pytest.approx(
        math.sqrt(0.6), abs=1e-12)
    assert measures.correlation([0.2, 0.2, 0.2, 0.5], [1, 2, 3, 4]) == pytest.approx(0.7746, 1e-4)
    # a monotone transform changes nothing; an order reversed flips the sign
    a = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0])
    b = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0])
    assert measures.correlation(np.exp(a), b) == pytest.approx(measures.correlation(a, b),
                                                                abs=1e-12)
    assert measures.correlation(a, -b) == pytest.approx(-measures.correlation(a, b), abs=1e-12)
    assert measures.correlation(a, a**3) == pytest.approx(1.0)


def test_pearson_is_the_linear_correlation():
    a, b = [1.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 3.0]
    assert measures.correlation(a, b, "pearson") == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_an_undefined_correlation_is_none_and_stays_strict_json():
    # constant input, or fewer than three pairs: no ranking to correlate (never NaN, never 0)
    for a, b in (([1, 2, 3], [5, 5, 5]), ([4, 4, 4], [1, 2, 3]), ([1, 2], [2, 1]), ([], [])):
        for method in ("spearman", "pearson"):
            r = measures.correlation(a, b, method)
            assert r is None
            assert json.dumps(study_files.to_json({"r": r}), allow_nan=False) == '{"r": null}'
    assert measures.format_correlation(None).startswith("undefined")
    assert measures.format_correlation(0.77459) == "+0.77"
    with pytest.raises(ValueError, match="shapes"):
        measures.correlation([1, 2, 3], [1, 2])


def _args(tmp_path, quick: bool) -> argparse.Namespace:
    return cli.build_parser("demo", "demo").parse_args(
        ["--out", str(tmp_path), *(["--quick"] if quick else [])])


def test_every_json_states_its_precisions(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.ENV_PRECISION, "mixed_bfloat16")
    doc = study_files.Study("demo", _args(tmp_path, False)).finish({})["doc"]
    assert doc["precision"]["training"] == "mixed_bfloat16"
    assert "ZOO_PRECISION" in doc["precision"]["training_reason"]
    assert doc["precision"]["measurement"] == "float32"
    monkeypatch.setenv(precision.ENV_PRECISION, "float32")
    study = study_files.Study("demo", _args(tmp_path, False), measurement="float64")
    assert study.precision["training"] == "float32"
    assert study.finish({})["doc"]["precision"]["measurement"] == "float64"
    own = study_files.Study("demo", _args(tmp_path, False), measurement="float64",
                       training_policy="float64")
    assert own.precision["training"] == "float64"


def test_a_smoke_size_run_decides_no_claim(tmp_path):
    claims = [{"report_figure": "f", "claim": "c", "measured": "m", "verdict": "yes"},
              {"report_figure": "f", "claim": "c", "measured": "m"}]
    quick = study_files.Study("demo", _args(tmp_path, True)).finish({}, claims)["doc"]
    assert [c["verdict"] for c in quick["claims"]] == [study_files.SMOKE_VERDICT] * 2
    stored = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert [c["verdict"] for c in stored["claims"]] == [study_files.SMOKE_VERDICT] * 2
    full = study_files.Study("demo", _args(tmp_path, False)).finish({}, claims)["doc"]
    assert [c["verdict"] for c in full["claims"]] == ["yes", None]


def test_grad_norm_measures_the_same_numbers_under_any_policy(mnist):
    """The first step's mini-batch loss and gradient norm are those of the same initial weights
    on the same batch, measured in float32: equal whether training runs in float32 or bf16."""
    first = {}
    for policy in ("float32", "mixed_bfloat16"):
        config = tiny_config("mlp_128", policy=policy, steps=2, batch_size=64, seed=5)
        _, losses, norms = grad_norm.run_steps(config, mnist, 2)
        first[policy] = (losses[0], norms[0])
    assert first["mixed_bfloat16"][0] == pytest.approx(first["float32"][0], rel=1e-6)
    assert first["mixed_bfloat16"][1] == pytest.approx(first["float32"][1], rel=1e-5)
