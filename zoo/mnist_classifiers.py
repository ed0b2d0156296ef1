"""MNIST classifiers of the two reports.

Every classifier takes `num_classes` (default 10: the digits; another number for other data, with
a new head) and raw 28x28 pixel intensities (0-255, float32) and carries its normalisation
inside the graph, so an export needs no preprocessing contract beyond "send the pixels". The last
activation is pinned to float32 so mixed-precision training keeps a numerically safe softmax.
"""

from __future__ import annotations

import keras
from keras import layers

from zoo.registry import InputSignature, ModelSpec, Recipe, Reference, register

PIXELS = InputSignature(
    name="images", shape=(28, 28), description="raw pixel intensities 0-255, float32"
)
REPORT_1 = "report 1 'Deep Learning Models to Train MNIST Dataset'"
REPORT_2 = "report 2 'Deep Learning with PyTorch'"


def _pixels_in() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input(shape=PIXELS.shape, dtype="float32", name=PIXELS.name)
    return inputs, layers.Rescaling(1.0 / 255.0, name="normalise")(inputs)


def _softmax_out(x, num_classes: int = 10, name: str = "probabilities"):
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name=name)(x)


# What every MNIST classifier shares in its spec.
MNIST = {"task": "classification", "dataset": "mnist", "alt_datasets": ("fashion_mnist",),
         "inputs": PIXELS}


@register(
    **MNIST,
    description="784 -> 10 softmax regression, zero-initialised, plain gradient descent",
    recipe=Recipe(optimizer="sgd", learning_rate=0.5, batch_size=100, epochs=5,
                  schedule="warmup_cosine"),
    reference=Reference(
        metric="accuracy",
        target=0.920,
        report_value=0.9223,
        provenance=f"{REPORT_2}: 91.86% after 1,000 steps of batch 100, 92.23% after 10,000",
    ),
)
def softmax_regression(num_classes: int = 10) -> keras.Model:
    inputs, x = _pixels_in()
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                     name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="softmax_regression")


@register(
    **MNIST,
    description="conv 5x5x32 + pool, conv 5x5x64 + pool, dense 1024 ReLU, dropout, softmax",
    recipe=Recipe(optimizer="adam", learning_rate=2e-3, batch_size=128, epochs=4,
                  schedule="warmup_cosine", warmup_epochs=0.25),
    reference=Reference(
        metric="accuracy",
        target=0.994,
        report_value=0.9927,
        provenance=f"{REPORT_2}: 99.27% after 20,000 iterations",
    ),
)
def deep_cnn(dropout: float = 0.4, num_classes: int = 10) -> keras.Model:
    inputs, x = _pixels_in()
    x = layers.Reshape((28, 28, 1), name="add_channel")(x)
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _softmax_out(x, num_classes), name="deep_cnn")


def mlp(hidden: tuple[int, ...], name: str, activation: str = "relu",
        num_classes: int = 10) -> keras.Model:
    inputs, x = _pixels_in()
    x = layers.Flatten(name="flatten")(x)
    for i, width in enumerate(hidden, start=1):
        x = layers.Dense(width, activation=activation, name=f"hidden{i}")(x)
    return keras.Model(inputs, _softmax_out(x, num_classes), name=name)


_MLPS = {
    "mlp_128": ((128,), "784-128-10, the shallow ~100k-weight MLP"),
    "mlp_107_64_64_64_16": ((107, 64, 64, 64, 16), "784-107-64-64-64-16-10, the deep ~100k MLP"),
    "mlp_128_64": ((128, 64), "784-128-64-10, the middle ~100k-weight MLP"),
}

for _name, (_hidden, _description) in _MLPS.items():
    register(ModelSpec(
        name=_name,
        builder=lambda num_classes=10, hidden=_hidden, name=_name: mlp(
            hidden, name, num_classes=num_classes),
        description=_description,
        **MNIST,
        recipe=Recipe(optimizer="adam", learning_rate=2e-3, batch_size=128, epochs=10,
                      schedule="warmup_cosine", warmup_epochs=0.5),
        reference=Reference(
            metric="accuracy",
            target=0.975,
            provenance=f"{REPORT_1}, Figs 7-10: loss and accuracy curves, no test figure given",
        ),
    ))
