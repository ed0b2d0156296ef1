"""The registry: every model builds, its spec matches the built model, mistakes are refused."""

from __future__ import annotations

import math

import keras
import pytest

import zoo
from zoo.registry import InputSignature, ModelSpec, Recipe, Reference

ALL_MODELS = zoo.list_models()


def test_the_reports_models_are_registered():
    assert {"softmax_regression", "deep_cnn"} <= set(ALL_MODELS)
    assert len(zoo.list_models("mlp_*")) == 3
    assert len(zoo.list_models("sinc_*")) == 3


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_builds_and_matches_its_spec(name):
    spec = zoo.get_spec(name)
    model = zoo.create_model(name)
    assert isinstance(model, keras.Model)
    # Parameter count: from the built weights, independently of Keras' own count.
    counted = sum(math.prod(w.shape) for w in model.weights)
    assert zoo.parameter_count(name) == counted == model.count_params()
    # The input is exactly what the spec promises, and what the export signature will be.
    (inp,) = model.inputs
    assert tuple(inp.shape[1:]) == spec.inputs.shape
    assert inp.dtype == spec.inputs.dtype
    out_dim = model.outputs[0].shape[-1]
    assert out_dim == (10 if spec.task == "classification" else 1)
    # The last activation stays float32 even under mixed precision.
    from training import precision

    precision.apply("mixed_bfloat16")
    mixed = zoo.create_model(name)
    assert mixed.layers[1].compute_dtype == "bfloat16"
    assert mixed.layers[-1].dtype_policy.compute_dtype == "float32"
    assert spec.reference.provenance and spec.recipe.epochs >= 1
    assert spec.dataset in spec.datasets


def test_parameter_counts_of_the_reports_sizes():
    # Report 1 describes ~100k-weight MLPs and ~600-weight function approximators.
    for name in zoo.list_models("mlp_*"):
        assert 95_000 <= zoo.parameter_count(name) <= 115_000, name
    for name in zoo.list_models("sinc_*"):
        assert 600 <= zoo.parameter_count(name) <= 950, name
    assert zoo.parameter_count("softmax_regression") == 784 * 10 + 10


def test_softmax_regression_is_zero_initialised():
    model = zoo.create_model("softmax_regression")
    assert all(not w.numpy().any() for w in model.weights)


def test_duplicate_names_raise():
    spec = zoo.get_spec("softmax_regression")
    with pytest.raises(ValueError, match="already registered"):
        zoo.register(spec)


def test_a_new_name_registers_and_lists():
    spec = ModelSpec(
        name="zz_test_only_model",
        builder=lambda: keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]),
        task="regression",
        dataset="sinc",
        inputs=InputSignature("x", (1,)),
        recipe=Recipe(optimizer="adam", learning_rate=1e-3, batch_size=8, epochs=1, loss="mse"),
        reference=Reference(metric="mse", target=1.0, provenance="test"),
        description="test",
    )
    from zoo import registry

    zoo.register(spec)
    try:
        assert zoo.list_models("zz_*") == ["zz_test_only_model"]
        assert "zz_test_only_model" not in zoo.list_models("*", exclude="zz_*")
    finally:
        del registry._REGISTRY["zz_test_only_model"]


def test_unknown_name_lists_close_matches_and_known_models():
    with pytest.raises(zoo.UnknownModelError) as e:
        zoo.create_model("deep_cn")
    message = str(e.value)
    assert "Did you mean: deep_cnn" in message
    for name in ALL_MODELS:
        assert name in message


def test_none_overrides_are_dropped_and_real_ones_reach_the_builder():
    default = zoo.create_model("deep_cnn", dropout=None)
    assert default.get_layer("dropout").rate == pytest.approx(0.4)
    assert zoo.create_model("deep_cnn", dropout=0.1).get_layer("dropout").rate == pytest.approx(0.1)


def test_reference_direction():
    acc = Reference(metric="accuracy", target=0.9, provenance="x")
    mse = Reference(metric="mse", target=0.1, provenance="x")
    assert acc.met_by(0.95) and not acc.met_by(0.85)
    assert mse.met_by(0.05) and not mse.met_by(0.2)


def test_register_as_a_decorator_names_the_model_after_its_builder():
    from zoo import registry

    fields = dict(task="regression", dataset="sinc", inputs=InputSignature("x", (1,)),
                  recipe=Recipe(optimizer="adam", learning_rate=1e-3, batch_size=8, epochs=1,
                                loss="mse"),
                  reference=Reference(metric="mse", target=1.0, provenance="test"),
                  description="test")

    @zoo.register(**fields)
    def zz_decorated(width: int = 3):
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(width),
                                 keras.layers.Dense(1)])

    try:
        assert zoo.get_spec("zz_decorated").builder is zz_decorated  # returned unchanged
        assert zoo.create_model("zz_decorated", width=5).count_params() == 2 * 5 + 6
        with pytest.raises(ValueError, match="already registered"):
            zoo.register(**fields)(zz_decorated)
        with pytest.raises(TypeError):
            zoo.register(zoo.get_spec("zz_decorated"), name="other")
    finally:
        del registry._REGISTRY["zz_decorated"]
