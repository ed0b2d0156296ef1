"""trajectories (report 1 Fig 11): PCA of weight trajectories against a random-walk null."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import measures
from analysis.trajectories import collected_epochs, random_walk_null
from tests.test_analysis_studies import run_study
from training import cli_types


def test_collected_epochs_are_the_init_and_every_multiple():
    assert collected_epochs(6, 3) == [0, 3, 6]
    assert collected_epochs(7, 3) == [0, 3, 6]
    assert collected_epochs(2, 1) == [0, 1, 2]
    assert collected_epochs(24, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    with pytest.raises(cli_types.UsageError, match="--every"):
        collected_epochs(2, 3)


def test_random_walk_null_keeps_starts_and_step_lengths():
    rng = np.random.default_rng(0)
    real = np.cumsum(rng.standard_normal((3, 5, 40)) * [[[1.0]], [[0.1]], [[3.0]]], axis=1)
    walk = random_walk_null(real, seed=1)
    assert walk.shape == real.shape
    np.testing.assert_array_equal(walk[:, 0], real[:, 0])
    np.testing.assert_allclose(np.linalg.norm(np.diff(walk, axis=1), axis=2),
                               np.linalg.norm(np.diff(real, axis=1), axis=2), rtol=1e-12)
    assert not np.allclose(walk, real)


def test_explained_variance_lists_have_five_entries_whatever_the_number_of_points():
    from analysis.trajectories import _pad

    assert _pad(np.array([0.7, 0.3])).tolist() == [0.7, 0.3, 0, 0, 0]
    assert _pad(np.linspace(0.5, 0.1, 9)).tolist() == np.linspace(0.5, 0.1, 9)[:5].tolist()


def test_pca_of_points_on_a_line_has_one_component():
    t = np.linspace(0, 1, 7)[:, None]
    direction = np.array([[3.0, 4.0, 0.0]]) / 5
    p = measures.pca(2.0 + t * direction)
    np.testing.assert_allclose(p["explained"][0], 1.0)
    np.testing.assert_allclose(np.abs(p["components"][0]), np.abs(direction[0]), atol=1e-12)


def test_trajectories_quick(tmp_path):
    doc = run_study("trajectories", tmp_path)
    r = doc["results"]
    assert r["collected_epochs"] == [0, 1, 2]
    runs = r["runs"]
    assert len(runs) == 3
    assert len({run["color"] for run in runs}) == 3  # one colour per run
    assert r["layer"] == "hidden1"
    assert doc["cost"]["training_steps"] > 0 and doc["cost"]["loss_evaluations"] == 3 * 3
    for view in r["views"].values():
        for key in ("projected", "null_projected"):
            assert np.array(view[key]).shape == (3, 3, 2)  # runs x collected epochs x 2
        for key in ("explained_variance", "null_explained_variance"):
            ev = np.array(view[key])
            assert np.all((ev >= 0) & (ev <= 1 + 1e-12)) and np.all(np.diff(ev) <= 1e-12)
        for key in ("per_run_projected", "per_run_null_projected"):
            assert np.array(view[key]).shape == (3, 3, 2)  # each run in its own PCA plane
        for key in ("per_run_explained_variance", "per_run_null_explained_variance"):
            ev = np.array(view[key])
            assert np.all((ev >= 0) & (ev <= 1 + 1e-12)) and np.all(np.diff(ev) <= 1e-12)
    for run in runs:
        assert len(run["metric"]) == 3 and len(run["step_norms"]) == 2
        assert all(s > 0 for s in run["step_norms"])
        # the plotted null walked the real run's step lengths
        np.testing.assert_allclose(run["null_step_norms"], run["step_norms"], rtol=1e-9)
    assert {f["file"] for f in doc["figures"]} == {"trajectories_pca.png", "explained_variance.png",
                                                    "trajectories_per_run.png"}
    # training raises the test accuracy it is labelled with
    assert np.mean([run["metric"][-1] for run in runs]) > np.mean([run["metric"][0]
                                                                    for run in runs])


def test_an_unknown_layer_lists_the_layers(tmp_path):
    from analysis import trajectories

    args = trajectories.build_parser().parse_args(["--quick", "--layer", "nope", "--out",
                                                   str(tmp_path)])
    with pytest.raises(cli_types.UsageError, match="hidden1"):
        trajectories.main(args)


def test_trajectories_of_one_run_have_fewer_points_than_components(tmp_path):
    """One run of three collected epochs: three points, two nonzero components, five plotted
    (`--runs 1` used to end in a matplotlib traceback)."""
    doc = run_study("trajectories", tmp_path, "--runs", "1")
    for view in doc["results"]["views"].values():
        for key in ("explained_variance", "null_explained_variance"):
            # three points, centred: at most two components with variance (a third at
            # roundoff), and the missing ones padded with zeros
            assert len(view[key]) == 5 and view[key][3:] == [0, 0]
            assert view[key][2] == pytest.approx(0, abs=1e-12)
            assert sum(view[key]) == pytest.approx(1.0)
