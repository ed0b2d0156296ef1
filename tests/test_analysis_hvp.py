"""Hessian-vector products, Lanczos, Hutchinson and SLQ against exact answers on real models."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import zoo
from analysis import hessian, hvp
from training import data, modeling


@pytest.fixture(scope="module")
def sinc():
    return data.load_dataset("sinc")


@pytest.fixture(scope="module")
def small(sinc):
    """A real zoo approximator (659 weights), a few hundred real points, float64."""
    keras.utils.set_random_seed(3)
    model = zoo.create_model("sinc_deep_50_10_4_tanh")
    obj = hvp.Objective(model, "mse", sinc.x_train[:300], sinc.y_train[:300], dtype="float64",
                        batch_size=128)
    return obj, obj.hessian()


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method", hvp.METHODS)
def test_hvp_matches_exact_hessian(small, method, sinc):
    obj, h = small
    other = hvp.Objective(obj.model, "mse", sinc.x_train[:300], sinc.y_train[:300],
                          dtype="float64", batch_size=128, method=method)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(obj.n)
        assert rel(other.hvp(v), h @ v) <= 1e-4
    assert other.hvps == 3
    # The exact Hessian is symmetric and not trivially zero.
    assert np.abs(h).max() > 1e-3


def _finite_difference_hvp(obj, v, eps=1e-5):
    w0 = obj.get_flat()
    obj.set_flat(w0 + eps * v)
    gp = obj.gradient()
    obj.set_flat(w0 - eps * v)
    gm = obj.gradient()
    obj.set_flat(w0)
    return (gp - gm) / (2 * eps)


def test_hvp_matches_finite_differences_regression(small):
    obj, _ = small
    v = np.random.default_rng(1).standard_normal(obj.n)
    assert rel(obj.hvp(v), _finite_difference_hvp(obj, v)) <= 1e-4


def test_hvp_matches_finite_differences_mnist_classifier():
    ds = data.load_dataset("mnist")
    keras.utils.set_random_seed(0)
    model = zoo.create_model("mlp_128")
    obj = hvp.Objective(model, "sparse_categorical_crossentropy", ds.x_train[:64],
                        ds.y_train[:64], dtype="float64")
    v = np.random.default_rng(2).standard_normal(obj.n)
    v /= np.linalg.norm(v)
    hv = obj.hvp(v)
    assert rel(hv, _finite_difference_hvp(obj, v, eps=1e-4)) <= 1e-4
    # forward-over-reverse and double backprop agree on a softmax classifier too
    other = hvp.Objective(obj.model, "sparse_categorical_crossentropy", ds.x_train[:64],
                          ds.y_train[:64], dtype="float64", method="double_backprop")
    assert rel(other.hvp(v), hv) <= 1e-8


def test_lanczos_top_matches_eigvalsh(small):
    obj, h = small
    exact = np.linalg.eigvalsh(h)[::-1][:5]
    top = hvp.lanczos_top(obj.hvp, obj.n, k=5, steps=120, seed=0, rtol=1e-8)
    np.testing.assert_allclose(top["eigenvalues"], exact, rtol=1e-6, atol=1e-9)
    assert top["steps"] < obj.n  # it did not just build the whole Krylov space


def test_one_lanczos_core_for_top_k_and_slq():
    """lanczos_top and slq run `lanczos`: the same T from the same start, and both stop on an
    invariant subspace (a rank-3 matrix: exact after 3 steps, however many were asked for)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    a = q @ np.diag(np.concatenate([[4.0, -2.0, 1.0], np.zeros(37)])) @ q.T
    alpha, beta = hvp.lanczos(lambda v: a @ v, 40, 30, np.random.default_rng(7))
    assert len(alpha) == len(beta) <= 4 and beta[-1] <= 1e-9
    top = hvp.lanczos_top(lambda v: a @ v, 40, k=2, steps=30, seed=7, rtol=1e-12)
    assert top["steps"] == len(alpha)
    np.testing.assert_allclose(top["history"][-1]["top"],
                               hvp.ritz_top(alpha, beta, 2)["top"], rtol=1e-12)
    np.testing.assert_allclose(top["eigenvalues"], [4.0, 1.0], atol=1e-10)
    assert top["smallest"] == pytest.approx(-2.0, abs=1e-10)
    res = hvp.slq(lambda v: a @ v, 40, runs=2, steps=30, seed=1)
    for nodes in res["nodes"]:
        assert len(nodes) <= 4
        assert np.abs(nodes[:, None] - np.array([-2.0, 0.0, 1.0, 4.0])).min(1).max() < 1e-8


def test_one_flat_layout_for_numpy_and_tensorflow():
    import tensorflow as tf

    variables = [keras.Variable(np.arange(6.0).reshape(2, 3), dtype="float32"),
                 keras.Variable(np.array([7.0]), dtype="float64"),
                 keras.Variable(np.arange(8.0).reshape(2, 2, 2) + 10, dtype="float32")]
    flat = hvp.flatten(variables)
    assert flat.dtype == np.float64 and flat.tolist() == [*range(6), 7.0, *range(10, 18)]
    shapes = [tuple(v.shape) for v in variables]
    parts = hvp.split_flat(flat, shapes)
    assert [p.shape for p in parts] == shapes
    np.testing.assert_array_equal(hvp.flatten_tf([tf.constant(p) for p in parts]), flat)
    np.testing.assert_array_equal(hvp.flatten(hvp.split_tf(tf.constant(flat), shapes)), flat)
    hvp.assign_flat(variables, -flat)
    assert [v.dtype for v in variables] == ["float32", "float64", "float32"]
    np.testing.assert_array_equal(hvp.flatten(variables), -flat)
    with pytest.raises(ValueError, match="has 16 entries"):
        hvp.assign_flat(variables, np.zeros(16))


def test_hutchinson_within_expected_error(small):
    obj, h = small
    samples = 60
    est = hvp.hutchinson_trace(obj.hvp, obj.n, samples, seed=5)
    expected_se = np.sqrt(hvp.hutchinson_variance(h) / samples)
    assert abs(est["trace"] - np.trace(h)) <= 4 * expected_se
    # the reported standard error estimates the true one
    assert 0.5 * expected_se <= est["stderr"] <= 2.0 * expected_se


def test_slq_recovers_a_known_spectrum():
    rng = np.random.default_rng(0)
    eig = np.concatenate([rng.normal(0, 0.01, 40), [1.0, 3.0, 7.0]])
    q, _ = np.linalg.qr(rng.standard_normal((43, 43)))
    a = q @ np.diag(eig) @ q.T
    res = hvp.slq(lambda v: a @ v, 43, runs=3, steps=43, seed=0)
    for nodes, weights in zip(res["nodes"], res["weights"]):
        assert abs(weights.sum() - 1) < 1e-10
        np.testing.assert_allclose(np.sort(nodes), np.sort(eig), atol=1e-8)
    grid = np.linspace(-1, 8, 4000)
    d = hvp.density(res["nodes"], res["weights"], grid, sigma=0.05)
    assert abs(np.trapezoid(d, grid) - 1) < 1e-3
    # First moment of SLQ = average of v^T A v for unit v: close to tr(A)/n.
    mean = np.mean([(w * t).sum() for t, w in zip(res["nodes"], res["weights"])])
    assert abs(mean - eig.mean()) < 0.3


def test_a_mixed_precision_model_is_measured_in_float64():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = zoo.create_model("sinc_deep_60_8_6_sigmoid")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].compute_dtype == "bfloat16"
    x = np.linspace(-1, 1, 50, dtype=np.float32).reshape(-1, 1)
    obj = hvp.Objective(model, "mse", x, np.sin(x), dtype="float64")
    clone = obj.model
    assert clone is not model and modeling.model_dtype(clone) == "float64"
    assert {v.dtype for v in clone.variables} == {"float64"}
    assert all(layer.compute_dtype == "float64" for layer in clone.layers[1:])
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(model(x), np.float64), atol=0.05)
    np.testing.assert_array_equal(obj.get_flat(), hvp.flatten(model.trainable_variables))


def test_hessian_study_quick(tmp_path):
    args = hessian.build_parser().parse_args(["--quick", "--out", str(tmp_path), "--seed", "1"])
    out = hessian.main(args)
    d = tmp_path / "hessian"
    for f in ("density.png", "top_eigenvalues.png", "trace.png"):
        assert (d / f).stat().st_size > 10_000
    doc = json.loads((d / "hessian.json").read_text())
    assert doc == out["doc"]
    r = doc["results"]
    lan, exact = r["lanczos"], np.array(r["exact"]["eigenvalues"])
    # The largest eigenvalue converges first; every Ritz value lies within its residual bound
    # of a true eigenvalue (the bound the study reports).
    assert abs(lan["eigenvalues"][0] - r["exact"]["top"][0]) <= 1e-6 * abs(exact).max()
    for value, bound in zip(lan["eigenvalues"], lan["residuals"]):
        assert np.abs(exact - value).min() <= bound + 1e-9
    assert abs(r["hutchinson"]["trace"] - r["exact"]["trace"]) <= (
        4 * r["exact"]["hutchinson_expected_stderr"])
    assert r["slq"]["grid"] and len(r["slq"]["grid"]) == len(r["slq"]["density"])
    assert doc["cost"]["hvps"] >= r["lanczos"]["steps"] + len(r["hutchinson"]["samples"])
    assert doc["cost"]["wall_seconds"] > 0
    assert doc["precision"]["measurement"] == r["dtype"] == "float64"
