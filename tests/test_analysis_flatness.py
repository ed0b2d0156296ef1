"""flatness: the path reproduces the end models' own float32 loss at a=0 and a=1, the
input-Jacobian norm against finite differences, measurements in float32 under mixed precision,
and the --quick run's report."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import zoo
from analysis import flatness as fl
from analysis import hvp, measures
from tests.test_analysis_studies import run_study
from training import cli_types, modeling


def _model(seed):
    keras.utils.set_random_seed(seed)
    return zoo.create_model("mlp_128")


def test_path_end_points_are_the_models_and_midpoint_is_the_average(mnist):
    a, b = _model(0), _model(1)
    x, y = mnist.x_test[:300], mnist.y_test[:300]
    alphas = fl.alphas_grid(7)
    assert alphas.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    path = fl.interpolate(a, b, alphas, {"test": (x, y)}, "classification")
    for i, m in ((2, a), (4, b)):
        own = measures.evaluate(m, x, y, "classification")
        assert path["test"]["loss"][i] == pytest.approx(own["loss"], rel=1e-6)
        assert path["test"]["accuracy"][i] == own["accuracy"]
    wa, wb = hvp.flatten(a.trainable_variables), hvp.flatten(b.trainable_variables)
    mid = _model(2)
    hvp.assign_flat(mid.trainable_variables, 0.5 * (wa + wb))
    assert path["test"]["loss"][3] == pytest.approx(
        measures.evaluate(mid, x, y, "classification")["loss"], rel=1e-6)
    assert path["distance"] == pytest.approx(np.linalg.norm(wa - wb))
    # the end models themselves were not moved by the path
    np.testing.assert_array_equal(hvp.flatten(a.trainable_variables), wa)


def test_jacobian_norm_matches_finite_differences(mnist):
    model = modeling.cast_model(_model(3), "float64")
    x = mnist.x_test[:1].astype(np.float64)
    got = fl.jacobian_norms(model, x)[0]
    h = 1e-3  # raw intensity units (0-255)
    eye = np.eye(x[0].size).reshape(-1, *x.shape[1:])
    plus = np.asarray(model(x + h * eye, training=False), np.float64)
    minus = np.asarray(model(x - h * eye, training=False), np.float64)
    jac = (plus - minus) / (2 * h)  # (pixels, classes) = d p / d pixel
    expected = fl.PIXEL_SCALE * np.linalg.norm(jac)
    assert got > 0
    assert got == pytest.approx(expected, rel=1e-6)
    # float32 copy: the same to float32 accuracy
    got32 = fl.jacobian_norms(modeling.cast_model(model, "float32"), x.astype(np.float32))[0]
    assert got32 == pytest.approx(expected, rel=1e-3)


def test_a_mixed_precision_model_is_measured_in_float32(mnist):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    m = _model(4)
    keras.mixed_precision.set_global_policy("float32")
    assert modeling.model_dtype(m) == "mixed"
    probe = measures.measured(m)
    assert probe is not m and modeling.model_dtype(probe) == "float32"
    np.testing.assert_array_equal(hvp.flatten(probe.trainable_variables),
                                  hvp.flatten(m.trainable_variables))
    x, y = mnist.x_test[:500], mnist.y_test[:500]
    # measures.evaluate measures the float32 copy, not the bf16 model (which differs)
    got = measures.evaluate(m, x, y, "classification")
    assert got == measures.evaluate(probe, x, y, "classification")
    as_trained = measures.evaluate(m, x, y, "classification", as_trained=True)
    assert as_trained["loss"] != got["loss"]
    assert as_trained["loss"] == pytest.approx(got["loss"], rel=0.05)
    # the path's end point a=0 is that float32 measurement
    path = fl.interpolate(m, _model(5), np.array([0.0]), {"test": (x, y)}, "classification")
    assert path["test"]["loss"][0] == pytest.approx(got["loss"], rel=1e-6)
    # a float32 or float64 model is measured as it is
    m32 = _model(6)
    assert measures.measured(m32) is m32


def test_flatness_quick(tmp_path):
    doc = run_study("flatness", tmp_path)
    r = doc["results"]
    alphas = np.array(r["alphas"])
    assert len(alphas) == 7 and alphas[0] == -1.0 and alphas[-1] == 2.0
    i0, i1 = r["endpoint_index"]["small"], r["endpoint_index"]["large"]
    assert alphas[i0] == 0.0 and alphas[i1] == 1.0
    for run in r["runs"]:
        path = run["path"]
        for split in ("train", "test"):
            # a=0 and a=1 reproduce measures.evaluate of the two trained models themselves
            assert path[split]["loss"][i0] == pytest.approx(run["own"]["small"][split]["loss"],
                                                            rel=1e-5)
            assert path[split]["loss"][i1] == pytest.approx(run["own"]["large"][split]["loss"],
                                                            rel=1e-5)
            assert path[split]["accuracy"][i0] == run["own"]["small"][split]["accuracy"]
        sizes = [m["batch_size"] for m in run["models"]]
        assert sizes == r["batch_sizes"] == [16, 128]
        small = run["models"][sizes.index(r["small_batch"])]
        assert small["test_loss"] == pytest.approx(run["own"]["small"]["test"]["loss"], rel=1e-5)
        assert all(m["jacobian_norm_mean"] > 0 for m in run["models"])
    # plotted arrays = the per-run numbers
    sw = r["sweep"]
    assert np.array(sw["test_accuracy"]).tolist() == [
        [m["test_accuracy"] for m in run["models"]] for run in r["runs"]]
    assert np.array(r["path_curves"]["train_loss"]).tolist() == [
        run["path"]["train"]["loss"] for run in r["runs"]]
    np.testing.assert_allclose(r["sweep_mean"]["jacobian_norm_mean"],
                               np.mean(sw["jacobian_norm_mean"], axis=0))
    # train and test of each model (the end models' own included), and 7 points x 2 sets
    assert doc["cost"]["loss_evaluations"] == len(r["runs"]) * (2 * 2 + 7 * 2)
    assert doc["precision"]["measurement"] == "float32"
    # two batch sizes: too few for a rank correlation, which is then null, not a made-up 0
    assert r["spearman_jacobian_vs_batch"] is None
    assert "undefined" in doc["claims"][1]["measured"]
    assert {f["file"] for f in doc["figures"]} == {"interpolation.png", "sensitivity.png"}


def test_flatness_rejects_regression_models_and_bad_grids(tmp_path):
    for extra, match in ((["--model", "sinc_deep_50_10_4_tanh"], "classification"),
                         (["--alphas", "30"], "3k\\+1")):
        args = fl.build_parser().parse_args([*extra, "--out", str(tmp_path)])
        with pytest.raises(cli_types.UsageError, match=match):
            fl.main(args)
