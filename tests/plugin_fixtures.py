"""Plugins as a user writes them, in a temporary folder: a model file with a custom Keras layer,
broken files of every kind the zoo refuses, and an installed-style distribution (a dist-info
folder with entry_points.txt, found by importlib.metadata on PYTHONPATH; nothing installed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

# A classifier of MNIST digits with a custom layer (Gain: one learned scale per pixel), the way
# a user registers one: keras.saving.register_keras_serializable, zoo.register.
PLUGIN = '''
import keras
from keras import layers

import zoo
from zoo.mnist_classifiers import PIXELS


@keras.saving.register_keras_serializable(package="my_plugin")
class Gain(layers.Layer):
    """x * g, one learned g per input element (starts at `start`)."""

    def __init__(self, start=1.0, **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def build(self, input_shape):
        self.g = self.add_weight(shape=input_shape[1:], name="g",
                                 initializer=keras.initializers.Constant(self.start))

    def call(self, x):
        return x * self.g

    def get_config(self):
        return {**super().get_config(), "start": self.start}


@zoo.register(
    task="classification", dataset="mnist", alt_datasets=("fashion_mnist",), inputs=PIXELS,
    description="pixels -> Gain -> dense 32 -> softmax (a plugin's model)",
    recipe=zoo.Recipe(optimizer="adam", learning_rate=3e-3, batch_size=64, epochs=1),
    reference=zoo.Reference(metric="accuracy", target=0.9, provenance="the plugin's author"),
)
def {name}(num_classes: int = 10) -> keras.Model:
    inputs = keras.Input(shape=PIXELS.shape, name=PIXELS.name)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Flatten()(Gain(1.0, name="gain")(x))
    x = layers.Dense(32, activation="relu")(x)
    x = layers.Dense({classes})(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="{name}")
'''


def write_plugin(directory: Path, name: str = "my_net", classes: str = "num_classes",
                 file: str = "my_models.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file
    path.write_text(PLUGIN.replace("{name}", name).replace("{classes}", classes))
    return path


# name -> (file text, what the one-line refusal must say)
BROKEN = {
    "import_error": ("import zoo\nimport no_such_package_here\n", "ModuleNotFoundError"),
    "registered_twice": (
        "import zoo\nfrom zoo.mnist_classifiers import deep_cnn\n"
        "zoo.register(name='deep_cnn', task='classification', dataset='mnist', inputs=None,\n"
        "             recipe=None, reference=None, description='')(deep_cnn)\n",
        "model 'deep_cnn' is already registered (by the zoo)"),
    "builder_raises": (None, "the builder of my_net raised ZeroDivisionError"),
    "wrong_classes": (None, "its classification task on this data needs 10 class probabilities"),
}


def write_broken(directory: Path, kind: str) -> Path:
    text, _ = BROKEN[kind]
    if kind == "builder_raises":
        path = write_plugin(directory, file=f"{kind}.py")
        path.write_text(path.read_text().replace(
            "    inputs = keras.Input(", "    1 / 0\n    inputs = keras.Input(", 1))
        return path
    if kind == "wrong_classes":
        return write_plugin(directory, classes="5", file=f"{kind}.py")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}.py"
    path.write_text(text)
    return path


def write_distribution(site: Path, dist: str, module: str, body: str,
                       version: str = "0.1") -> Path:
    """An installed-style distribution in `site` (put `site` on PYTHONPATH): its module, and a
    dist-info folder whose entry_points.txt names the module in keras_model_zoo.models."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(body)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [keras_model_zoo.models]
        {module} = {module}
        """))
    return site
