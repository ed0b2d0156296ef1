"""Every study's --quick run: its PNGs exist, its JSON is finite and agrees with the plot data,
states its precisions, and decides no claim."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

from analysis.study_files import SMOKE_VERDICT
from training import precision


def run_study(name, tmp_path, *extra):
    mod = importlib.import_module(f"analysis.{name}")
    args = mod.build_parser().parse_args(["--quick", "--out", str(tmp_path), *extra])
    out = mod.main(args)
    d = tmp_path / name
    doc = json.loads((d / f"{name}.json").read_text())
    assert doc == out["doc"]
    assert doc["figures"], "a study must draw something"
    for fig in doc["figures"]:
        assert (d / fig["file"]).stat().st_size > 5_000, fig
        assert fig["caption"]
    assert doc["cost"]["wall_seconds"] > 0
    assert doc["config"]["quick"] is True
    _assert_finite(doc)
    # the precisions: trained in --precision resolved (unless the study trains itself), measured
    # in float32 or float64 whatever trained it
    prec = doc["precision"]
    assert prec["measurement"] in ("float32", "float64")
    if prec["training_reason"] != "set by the study (--precision unused)":
        assert prec["training"] == precision.choose(doc["config"]["precision"]).policy
    # a smoke-size run decides no claim, in its verdict or in its measured text
    for claim in doc["claims"]:
        assert claim["verdict"] == SMOKE_VERDICT
        assert not claim["measured"].lower().startswith(("yes", "no:", "no "))
    return doc


def _assert_finite(o):
    if isinstance(o, dict):
        for v in o.values():
            _assert_finite(v)
    elif isinstance(o, list):
        for v in o:
            _assert_finite(v)
    elif isinstance(o, float):
        assert math.isfinite(o)


def test_function_fit(tmp_path):
    doc = run_study("function_fit", tmp_path)
    models = doc["results"]["models"]
    assert set(models) == {"sinc_shallow_300_tanh", "sinc_deep_50_10_4_tanh",
                           "sinc_deep_60_8_6_sigmoid"}
    y = np.array(doc["results"]["y_test"])
    for m in models.values():
        assert 400 < m["parameters"] < 1000  # the report's ~600-weight networks
        assert len(m["runs"]) == 2
        for run in m["runs"]:
            # the reported MSE is the MSE of the plotted prediction
            assert run["test_mse"] == pytest.approx(np.mean((np.array(run["prediction"]) - y) ** 2))
            assert len(run["loss"]) == len(run["grad_norm"]) == 4  # init + 3 epochs
        assert m["test_mse_mean"] == pytest.approx(np.mean(m["test_mse_runs"]))
    v = doc["results"]["verdict"]
    assert v["depth_helps"] is None and v["tanh_beats_sigmoid"] is None  # quick: not decided
    assert v["depth_helps_verdict"] == v["tanh_beats_sigmoid_verdict"] == SMOKE_VERDICT


def test_function_fit_decides_only_at_full_size():
    from analysis.function_fit import DEFAULT_MODELS, _verdict

    shallow, deep_tanh, deep_sig = DEFAULT_MODELS
    per_model = {shallow: {"test_mse_runs": np.array([0.02, 0.03])},
                 deep_tanh: {"test_mse_runs": np.array([0.01, 0.015])},
                 deep_sig: {"test_mse_runs": np.array([0.005, 0.006])}}
    full = _verdict(per_model, decide=True)
    assert (full["depth_helps"], full["depth_helps_verdict"]) == (True, "yes")
    assert (full["tanh_beats_sigmoid"], full["tanh_beats_sigmoid_verdict"]) == (False, "no")
    assert "deep better in 4/4 pairs" in full["depth_helps_text"]
    smoke = _verdict(per_model, decide=False)
    assert smoke["depth_helps"] is None and smoke["depth_helps_verdict"] == SMOKE_VERDICT
    assert smoke["depth_helps_text"] == full["depth_helps_text"]  # the same numbers, undecided
    for text in (smoke["depth_helps_text"], smoke["tanh_beats_sigmoid_text"]):
        assert "yes" not in text and "no" not in text.split()


def test_function_fit_other_function(tmp_path):
    doc = run_study("function_fit", tmp_path, "--function", "np.sin(3*x)", "--seeds", "1",
                    "--models", "sinc_deep_50_10_4_tanh")
    x = np.array(doc["results"]["x_test"])
    np.testing.assert_allclose(doc["results"]["y_test"], np.sin(3 * x), atol=1e-6)


def test_function_fit_rejects_a_classifier(tmp_path):
    from analysis import function_fit
    from training import cli_types

    args = function_fit.build_parser().parse_args(["--models", "mlp_128", "--out", str(tmp_path)])
    with pytest.raises(cli_types.UsageError, match="regression"):
        function_fit.main(args)


def test_digits(tmp_path):
    doc = run_study("digits", tmp_path)
    r = doc["results"]
    w = np.array(r["weights"])
    assert w.shape == (10, 28, 28)
    assert r["weight_scale"] == pytest.approx(np.abs(w).max())
    assert len(r["sample_labels"]) == 32
    assert np.array(r["pixel_matrix"]).shape == (28, 28)
    assert r["test"]["accuracy"] > 0.5  # 60 steps of softmax regression already learn


def test_mnist_curves(tmp_path):
    doc = run_study("mnist_curves", tmp_path, "--train-limit", "5")
    # The flags given, and what ran: --quick's sizes replace --train-limit 5.
    assert doc["config"]["train_limit"] == 5
    assert doc["config"]["ran"] == {"epochs": [2], "steps_per_epoch": [8], "batch_size": [128],
                                    "train_limit": [2000], "test_limit": [500]}
    for m in doc["results"]["models"].values():
        assert 90_000 < m["parameters"] < 110_000
        c = m["curves"]
        assert np.array(c["test_accuracy"]).shape == (2, 2)  # seeds x epochs
        assert m["final_test_accuracy"] == [row[-1] for row in c["test_accuracy"]]
        assert m["wall_seconds_per_run"] == pytest.approx([sum(r) for r in c["seconds"]])


def test_grad_norm(tmp_path):
    doc = run_study("grad_norm", tmp_path)
    runs = doc["results"]["runs"]
    assert len(runs) == 2 and len(runs[0]["loss"]) == 40
    assert doc["results"]["optimizer"]["optimizer"] == "sgd"
    assert all(v > 0 for r in runs for v in r["grad_norm"])
    # training lowers the loss
    assert np.mean(runs[0]["loss"][-10:]) < np.mean(runs[0]["loss"][:10])
    # under a mixed policy a float32 copy measures each step with a gradient of its own
    shared = doc["precision"]["training"] == "float32"
    assert doc["cost"]["gradients"] == (80 if shared else 160)


def test_run_prints_explained_errors_in_one_line_and_keeps_tracebacks_of_bugs(capsys):
    from analysis import cli, study_files
    from training import cli_types

    parser = cli.build_parser("demo", "demo")

    def mistaken(args):
        raise cli_types.UsageError("--model must be a classifier")

    assert cli.run(mistaken, parser, []) == 2
    assert capsys.readouterr().err.strip().endswith("error: --model must be a classifier")

    def diverged(args):
        return {"json": study_files.to_json({"loss": float("nan")})}

    assert cli.run(diverged, parser, []) == 2
    assert "the study diverged" in capsys.readouterr().err

    def buggy(args):
        raise ValueError("x and y must have same first dimension")

    with pytest.raises(ValueError, match="same first dimension"):
        cli.run(buggy, parser, [])
