"""The ~600-weight approximators of y = sin(5*pi*x) / (5*pi*x) from report 1 (Figs 1-6).

Input `x` (N, 1) float32, output `y` (N, 1) float32.
"""

from __future__ import annotations

import keras
from keras import layers

from zoo.registry import InputSignature, ModelSpec, Recipe, Reference, register

X = InputSignature(name="x", shape=(1,), description="a point of the function's domain")

_APPROXIMATORS = {
    "sinc_shallow_300_tanh": ((300,), "tanh", "1 hidden layer of 300 (tanh)"),
    "sinc_deep_50_10_4_tanh": ((50, 10, 4), "tanh", "3 hidden layers 50-10-4 (tanh)"),
    "sinc_deep_60_8_6_sigmoid": ((60, 8, 6), "sigmoid", "3 hidden layers 60-8-6 (sigmoid)"),
}


def approximator(hidden: tuple[int, ...], activation: str, name: str) -> keras.Model:
    inputs = keras.Input(shape=X.shape, dtype="float32", name=X.name)
    x = inputs
    for i, width in enumerate(hidden, start=1):
        x = layers.Dense(width, activation=activation, name=f"hidden{i}")(x)
    outputs = layers.Dense(1, dtype="float32", name="y")(x)
    return keras.Model(inputs, outputs, name=name)


for _name, (_hidden, _activation, _description) in _APPROXIMATORS.items():
    register(
        ModelSpec(
            name=_name,
            builder=lambda h=_hidden, a=_activation, n=_name: approximator(h, a, n),
            task="regression",
            dataset="sinc",
            inputs=X,
            description=f"y = sin(5*pi*x)/(5*pi*x) approximator: {_description}",
            recipe=Recipe(
                optimizer="adam", learning_rate=1e-3, batch_size=64, epochs=400, loss="mse"
            ),
            reference=Reference(
                metric="mse",
                target=5e-3,
                provenance="report 1 'Deep Learning Models to Train MNIST Dataset', Figs 1-6: "
                "fits plotted, no number given; target is ours "
                "(400 epochs, seeds 0-2: 300-tanh 0.0028-0.0035, 50-10-4-tanh <= 0.0001, "
                "60-8-6-sigmoid 0.0007-0.0023)",
            ),
        )
    )
