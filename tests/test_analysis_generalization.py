"""The generalization studies: shuffled labels and parameters against generalization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import zoo
from analysis.params_vs_generalization import scaled_model
from analysis.random_labels import shuffle_labels
from tests.test_analysis_studies import run_study
from training import cli_types


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_shuffle_labels_keeps_the_histogram_and_breaks_the_link(fraction):
    y = np.random.default_rng(1).integers(0, 10, 5000).astype(np.uint8)
    out = shuffle_labels(y, 4000, fraction, seed=3)
    assert np.array_equal(out[4000:], y[4000:])  # beyond n nothing moves
    counts = np.bincount(out[:4000], minlength=10)
    assert np.array_equal(counts, np.bincount(y[:4000], minlength=10))
    changed = np.mean(out[:4000] != y[:4000])
    # a shuffled label equals the old one by chance ~1/10 of the time
    assert changed == pytest.approx(0.9 * fraction, abs=0.03)
    assert np.array_equal(out, shuffle_labels(y, 4000, fraction, seed=3))  # repeatable


def test_shuffle_labels_refuses_a_bad_fraction():
    with pytest.raises(cli_types.UsageError, match="fractions"):
        shuffle_labels(np.zeros(10, np.uint8), 10, 1.5, 0)


def test_random_labels_quick(tmp_path):
    doc = run_study("random_labels", tmp_path)
    fr = doc["results"]["fractions"]
    assert set(fr) == {"0", "1"}
    for f in fr.values():
        acc = np.array(f["curves"]["test_accuracy"])
        assert acc.shape == (2, 3)  # seeds x epochs
        assert f["final_test_accuracy_mean"] == pytest.approx(acc[:, -1].mean())
    assert fr["0"]["labels_changed"] == [0.0, 0.0]
    assert min(fr["1"]["labels_changed"]) > 0.8


def _widths(model):
    return [layer.units for layer in model.layers if hasattr(layer, "units")]


def test_scaled_model_scales_hidden_layers_and_keeps_the_output():
    base = zoo.create_model("mlp_128_64")
    wide = scaled_model(base, 2.0)
    assert _widths(wide) == [256, 128, 10]
    assert wide.output_shape == base.output_shape
    cnn = scaled_model(zoo.create_model("deep_cnn"), 0.25)
    assert [layer.filters for layer in cnn.layers if hasattr(layer, "filters")] == [8, 16]
    assert _widths(cnn) == [256, 10]
    assert _widths(scaled_model(zoo.create_model("sinc_deep_50_10_4_tanh"), 0.01)) == [1, 1, 1, 1]


def test_scaled_model_refuses_a_model_without_hidden_layers():
    with pytest.raises(cli_types.UsageError, match="no hidden"):
        scaled_model(zoo.create_model("softmax_regression"), 2.0)


def test_params_vs_generalization_quick(tmp_path):
    doc = run_study("params_vs_generalization", tmp_path)
    r = doc["results"]
    assert [w["factor"] for w in r["widths"]] == [0.25, 1.0]
    assert r["parameters"] == [25_450, 101_770]  # 784-32-10 and 784-128-10
    runs = np.array(r["test_loss_runs"])
    assert runs.shape == (2, 2)  # seeds x widths
    np.testing.assert_allclose(r["test_loss_mean"], runs.mean(0))
    assert r["widths"][1]["runs"][0]["test"]["loss"] == runs[0, 1]
    # every width trained in the policy the JSON states, not in the float32 its base model
    # was built in
    compute = keras.mixed_precision.Policy(doc["precision"]["training"]).compute_dtype
    assert [w["compute_dtypes"] for w in r["widths"]] == [[compute]] * 2
