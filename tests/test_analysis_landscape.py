"""landscape: filter-normalised directions, the surface's centre, the init -> solution path."""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from analysis import hvp, measures
from analysis.landscape import Surface, build_parser, filter_normalised, linear_path_alphas, main
from tests.test_analysis_studies import run_study
from training import cli_types


def test_filter_normalisation_gives_each_filter_the_trained_filters_norm():
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((5, 5, 1, 8)) * np.arange(1, 9),  # conv kernel, 8 filters
               rng.standard_normal(8),  # its bias
               rng.standard_normal((20, 3)) * [0.1, 1.0, 10.0]]  # dense kernel, 3 units
    direction = [rng.standard_normal(w.shape) for w in weights]
    d = filter_normalised(direction, weights)
    per_filter = [np.linalg.norm(k[..., j]) for k in (d[0], weights[0]) for j in range(8)]
    np.testing.assert_allclose(per_filter[:8], per_filter[8:], rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(d[2], axis=0), np.linalg.norm(weights[2], axis=0),
                               rtol=1e-9)
    assert not d[1].any()  # biases get no direction, as in Li et al.
    # only the norms change: each filter keeps the random direction it was given
    cos = np.sum(d[2] * direction[2], axis=0) / (np.linalg.norm(d[2], axis=0)
                                                 * np.linalg.norm(direction[2], axis=0))
    np.testing.assert_allclose(cos, 1.0)


def test_the_surface_evaluates_the_model_at_a_flat_weight_vector(mnist):
    model = zoo.create_model("mlp_128")
    x, y = mnist.x_train[:300], mnist.y_train[:300]
    surface = Surface(model, x, y, "classification", "float64")
    theta = hvp.flatten(model.trainable_variables)
    at_theta = surface(theta)
    measured = measures.evaluate(model, x, y, "classification")
    assert at_theta["loss"] == pytest.approx(measured["loss"], rel=1e-5)
    shifted = surface.along(theta, [np.ones_like(theta)], np.array([[0.0], [0.01]]))
    assert shifted["loss"][0] == pytest.approx(at_theta["loss"], rel=1e-12)
    assert shifted["loss"][1] != pytest.approx(at_theta["loss"], rel=1e-6)


def test_landscape_quick(tmp_path):
    doc = run_study("landscape", tmp_path)
    r = doc["results"]
    trained = r["trained"]["loss"]
    # the centre of the 1-D slice and of the 2-D grid is the trained model itself
    i = len(r["one_d"]["alpha"]) // 2
    assert r["one_d"]["alpha"][i] == 0 and r["one_d"]["loss"][i] == pytest.approx(trained)
    per = np.array(r["one_d"]["loss_per_direction"])
    assert per.shape == (2, 7) and np.all(per[:, i] == trained)  # quick: 2 directions
    np.testing.assert_array_equal(per[0], r["one_d"]["loss"])
    assert not np.allclose(per[0], per[1])  # independent directions
    z = np.array(r["two_d"]["loss"])
    assert z.shape == (5, 5) and z[2, 2] == pytest.approx(trained)
    assert z[2, 2] <= z.min() * 1.5  # a basin around the solution
    # the straight path: a = 0 is the initialisation, a = 1 the solution
    lp = r["linear_path"]
    assert lp["loss"][lp["a"].index(1.0)] == trained  # a = 1.0 and 0.0 lie exactly on the grid
    assert lp["loss"][lp["a"].index(0.0)] == r["init"]["loss"] > trained
    assert lp["a"][0] < 0 and lp["a"][-1] > 1
    # measured in float32 whatever trained it; the run as trained is only informational (it is
    # near the measurement, and not the same number under a mixed policy)
    assert doc["precision"]["measurement"] == r["dtype"] == "float32"
    info = r["informational_as_trained"]
    assert info["precision"] == doc["precision"]["training"]
    assert info["loss"] == pytest.approx(trained, rel=0.05)
    if info["precision"] == "float32":
        assert info["loss"] == pytest.approx(trained, rel=1e-6)
    t = r["trajectory"]
    assert np.array(t["coords"]).shape == (3, 2)  # init + 2 epochs
    np.testing.assert_allclose(t["coords"][-1], [0, 0], atol=1e-6)  # centred on the solution
    assert 0 <= t["explained_variance"][1] <= t["explained_variance"][0] <= 1
    # trained (float32 copy and own precision), 1-D x 2, 2-D, trajectory plane, path, init
    assert doc["cost"]["loss_evaluations"] == 2 + 2 * 7 + 25 + 25 + len(lp["a"]) + 1


def test_linear_path_grid_passes_exactly_through_init_and_solution():
    for n in (5, 7, 41):
        a = linear_path_alphas(n).tolist()
        assert 0.0 in a and 1.0 in a and a[0] < 0 and a[-1] > 1
        np.testing.assert_allclose(np.diff(a), 1 / (n - 1))


def test_landscape_rejects_an_even_grid(tmp_path):
    args = build_parser().parse_args(["--grid", "4", "--out", str(tmp_path)])
    with pytest.raises(cli_types.UsageError, match="odd"):
        main(args)
