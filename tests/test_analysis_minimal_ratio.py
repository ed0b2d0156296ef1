"""minimal_ratio: exact counts on a quadratic of known spectrum, the tolerance band at its
edges, the Hessian against hvp.Objective.hessian, and the --quick run's report."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import zoo
from analysis import hvp, measures
from analysis import minimal_ratio as mr
from tests.test_analysis_studies import run_study
from training import cli_types, data

# 8 eigenvalues: 4 clearly positive, 2 clearly negative, 2 inside a 1e-6 relative band
SPECTRUM = np.array([5.0, 2.0, 1.0, 0.5, -1.0, -3.0, 1e-9, -1e-9])


def quadratic_problem(eigenvalues, seed=0):
    """A Keras model + loss + data whose mean loss is exactly 0.5 w'Aw, A = Q diag(l) Q'.

    Model: x -> x.w (a bias-free Dense(1)); example i has x_i = sqrt(|l_i|) q_i, y_i =
    sign(l_i), loss y * pred^2 * N / 2, so mean loss = 0.5 sum_i l_i (q_i.w)^2."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    x = (np.sqrt(np.abs(eigenvalues))[:, None] * q.T).astype(np.float64)
    y = np.sign(eigenvalues).reshape(-1, 1).astype(np.float64)
    a = q @ np.diag(eigenvalues) @ q.T

    def loss(y_true, y_pred):
        return y_true * y_pred**2 * (n / 2.0)

    inputs = keras.Input(shape=(n,), dtype="float64")
    out = keras.layers.Dense(1, use_bias=False, dtype="float64", name="w")(inputs)
    model = keras.Model(inputs, out)
    return model, loss, x, y, a


def test_minimal_ratio_of_a_known_quadratic_is_exact():
    model, loss, x, y, a = quadratic_problem(SPECTRUM)
    runner = mr.Runner(model, loss, x, y, "adam", 1e-3)
    runner.set_weights(np.zeros(8))  # the critical point of 0.5 w'Aw
    value, g, hg, h, ev = runner.measure()
    np.testing.assert_allclose(h, a, atol=1e-12)
    np.testing.assert_allclose(ev, np.sort(SPECTRUM), atol=1e-12)
    assert value == 0.0 and np.linalg.norm(g) == 0.0 and np.linalg.norm(hg) == 0.0
    c = mr.minimal_ratio(ev, 1e-6)
    assert (c["positive"], c["negative"], c["near_zero"]) == (4, 2, 2)
    assert c["ratio"] == 4 / 8
    assert c["ratio_nonzero"] == 4 / 6
    assert mr.classify(0.0, 0.0, 5.0, 1e-3, 1e-2) == "critical"
    # Away from 0 the gradient is A w and H g = A^2 w, exactly.
    w = np.random.default_rng(1).standard_normal(8)
    runner.set_weights(w)
    value, g, hg, _, _ = runner.measure()
    assert value == pytest.approx(0.5 * w @ a @ w, rel=1e-12)
    np.testing.assert_allclose(g, a @ w, atol=1e-12)
    np.testing.assert_allclose(hg, a @ a @ w, atol=1e-11)


def test_perturbation_proxy_of_an_exact_quadratic_is_its_quadratic_prediction():
    model, loss, x, y, a = quadratic_problem(SPECTRUM)
    runner = mr.Runner(model, loss, x, y, "adam", 1e-3)
    runner.set_weights(np.zeros(8))
    d = 1e-2 * np.random.default_rng(2).standard_normal((300, 8))
    raised = runner.losses_at(d) > 0.0
    quad = 0.5 * ((d @ a) * d).sum(1)
    np.testing.assert_array_equal(raised, quad > 0)
    # a definite quadratic: every perturbation raises the loss; the weights are restored
    model2, loss2, x2, y2, _ = quadratic_problem(np.abs(SPECTRUM) + 0.1)
    r2 = mr.Runner(model2, loss2, x2, y2, "adam", 1e-3)
    r2.set_weights(np.zeros(8))
    assert mr.perturbation_proxy(r2.losses_at, np.zeros(8), 0.0, d) == 1.0
    np.testing.assert_array_equal(r2.get_weights(), np.zeros(8))


def test_tolerance_band_edges():
    # max |lambda| = 8 and relative tolerance 2^-10: the band is |lambda| <= 2^-7, exactly.
    tol = 2.0**-7
    up, down = np.nextafter(tol, np.inf), np.nextafter(tol, 0.0)
    ev = np.array([8.0, tol, -tol, up, -up, down, -down, 0.0])
    c = mr.minimal_ratio(ev, 2.0**-10)
    assert c["tolerance"] == tol
    assert (c["positive"], c["negative"], c["near_zero"]) == (2, 1, 5)  # on the edge = zero
    assert c["ratio"] == 2 / 8 and c["ratio_nonzero"] == 2 / 3
    # no band: only the exact zero is "zero"; a band wider than everything: all zero
    c0 = mr.minimal_ratio(ev, 0.0)
    assert (c0["positive"], c0["negative"], c0["near_zero"]) == (4, 3, 1)
    c1 = mr.minimal_ratio(ev, 1.0)
    assert (c1["positive"], c1["negative"], c1["near_zero"]) == (0, 0, 8)
    assert c1["ratio"] == 0.0 and c1["ratio_nonzero"] == 1.0
    # the band scales with the spectrum: the same counts for 1000 x the eigenvalues
    c3 = mr.minimal_ratio(1000 * ev, 2.0**-10)
    assert (c3["positive"], c3["negative"], c3["near_zero"]) == (2, 1, 5)


def test_classify_edges():
    assert mr.classify(1e-3, 1.0, 1.0, 1e-3, 1e-2) == "critical"  # |g| == grad-tol
    g = np.nextafter(1e-3, 1.0)
    assert mr.classify(g, 1e-2 * 2.0 * g, 2.0, 1e-3, 1e-2) == "gradient_flat"  # on the edge
    assert mr.classify(g, np.nextafter(1e-2 * 2.0 * g, 1.0), 2.0, 1e-3, 1e-2) == "not_converged"


def test_runner_hessian_is_objective_hessian_and_gn_lowers_the_gradient():
    ds = data.make_sinc(seed=0, n_train=120)
    keras.utils.set_random_seed(1)
    model = zoo.create_model("sinc_deep_50_10_4_tanh")
    runner = mr.Runner(model, "mse", ds.x_train, ds.y_train, "adam", 1e-3)
    runner.set_weights(hvp.flatten(model.trainable_variables))
    runner.train(200)
    _, g0, _, h, ev = runner.measure()
    obj = hvp.Objective(runner.obj.model, "mse", ds.x_train, ds.y_train, dtype="float64")
    np.testing.assert_allclose(h, obj.hessian(), atol=1e-12)
    np.testing.assert_allclose(ev, np.linalg.eigvalsh(h), atol=1e-10)
    runner.minimise_grad_norm(300, 1e-3)
    _, g1, _, _, _ = runner.measure()
    assert np.linalg.norm(g1) < np.linalg.norm(g0)


def test_refuses_a_model_too_big_for_an_exact_hessian(tmp_path):
    args = mr.build_parser().parse_args(["--model", "mlp_128", "--out", str(tmp_path)])
    with pytest.raises(cli_types.UsageError, match="max-params"):
        mr.main(args)


def test_minimal_ratio_quick(tmp_path):
    doc = run_study("minimal_ratio", tmp_path)
    r = doc["results"]
    runs = r["runs"]
    assert len(runs) == 4 and r["parameters"] == zoo.parameter_count("sinc_deep_50_10_4_tanh")
    tol = doc["config"]["eig_tol"]
    for run in runs:
        ev = np.array(run["eigenvalues"])
        assert len(ev) == r["parameters"] and np.all(np.diff(ev) >= 0)
        c = mr.minimal_ratio(ev, tol)
        assert run["positive"] == c["positive"] and run["negative"] == c["negative"]
        assert run["positive"] + run["negative"] + run["near_zero"] == len(ev)
        assert run["minimal_ratio"] == pytest.approx(run["positive"] / len(ev))
        assert run["lambda_max"] == ev[-1] and run["lambda_min"] == ev[0]
        assert run["kind"] == mr.classify(run["grad_norm"], run["hg_norm"], np.abs(ev).max(),
                                          doc["config"]["grad_tol"], doc["config"]["flat_tol"])
        assert 0.0 <= run["proxy"] <= 1.0 and 0.0 <= run["proxy_quadratic"] <= 1.0
        assert run["ratio_by_tolerance"][r["tolerance_sweep"].index(1e-6)] == \
            pytest.approx(mr.minimal_ratio(ev, 1e-6)["ratio"])
    assert sum(r["kinds"].values()) == 4
    assert doc["precision"] == {"training": "float64", "measurement": "float64",
                                "training_reason": "set by the study (--precision unused)"}
    assert r["spearman_ratio_vs_loss"] == measures.correlation(
        [x["loss"] for x in runs], [x["minimal_ratio"] for x in runs])
    assert r["mean_minimal_ratio"] == pytest.approx(np.mean([x["minimal_ratio"] for x in runs]))
    n, steps = r["parameters"], sum(x["train_steps"] for x in runs)
    assert doc["cost"]["hvps"] == 4 * (doc["config"]["gn_steps"] + 1 + n)
    assert doc["cost"]["training_steps"] == steps
    assert doc["cost"]["loss_evaluations"] == 4 * (doc["config"]["perturbations"] + 1)
    assert {f["file"] for f in doc["figures"]} == {
        "minimal_ratio_vs_loss.png", "proxy_vs_minimal_ratio.png",
        "gradient_flatness_and_tolerance.png"}
