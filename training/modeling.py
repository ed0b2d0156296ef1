"""A zoo model made ready to train or to measure: compiled with its recipe, or copied into a
stated precision. The one home of these facts for training, export, analysis and benchmarks.

Measurements (test metrics, export checks, every analysis study) run in float32 (float64 where a
study says so) whatever policy trained the model, so that a number means the same on a CPU with
native bf16 and on one without (docs/ARCHITECTURE.md, "Precision").
"""

from __future__ import annotations

import copy

import numpy as np

import zoo
from training import data
from training.config import TrainConfig

STEPS_PER_EXECUTION = 50
MEASUREMENT_DTYPE = "float32"


class SpecMismatchError(ValueError):
    """A model (a checkpoint, a run's model.keras) is not the one its config names."""


def check_against_spec(model, config: TrainConfig, what) -> None:
    """Refuse a model that is not `config.model`'s architecture: its name, input and output
    shapes and parameter count are compared with a fresh build of the spec (the certificate
    vouches for them, and a resume would train the wrong model)."""
    expected = fresh_model(config)
    found = []
    for label, mine, theirs in (
            ("architecture", model.name, expected.name),
            ("input shape", model.input_shape, expected.input_shape),
            ("output shape", model.output_shape, expected.output_shape),
            ("parameters", model.count_params(), expected.count_params())):
        if mine != theirs:
            found.append(f"{label} {mine}, the spec's {theirs}")
    if found:
        raise SpecMismatchError(f"{what} is not a {config.model} model ({'; '.join(found)}); "
                                "it was replaced or belongs to another run: refused")


def reference_verdict(spec, config: TrainConfig, dataset: data.Dataset,
                      value: float) -> tuple[bool | None, str | None]:
    """(met, why not measured): the reference is met or not only on the whole test set of the
    spec's own dataset; otherwise None, and why."""
    if config.dataset != spec.dataset:
        return None, f"the reference is for {spec.dataset}, not {config.dataset}"
    if config.test_limit and config.test_limit < len(dataset.x_test):
        return None, (f"measured on {config.test_limit} of the {len(dataset.x_test)} test "
                      "examples (--test-limit); the reference needs them all")
    return spec.reference.met_by(value), None


def compile_model(config: TrainConfig, model=None):
    """Compile `model` (default: a fresh zoo.create_model(config.model)) with the recipe."""

    model = fresh_model(config) if model is None else model
    optimizer = make_optimizer(config)
    # Several steps per tf.function call: small models are otherwise bound by Python overhead.
    model.compile(optimizer=optimizer, loss=config.loss, metrics=metric_names(config.task),
                  steps_per_execution=steps_per_execution(config))
    return model


def class_overrides(config: TrainConfig) -> dict:
    """{"num_classes": N} when the run's data has its own class count and the builder takes
    it (the zoo's classifiers do; a plugin's may), else nothing."""
    if config.num_classes is None or not zoo.registry.takes_num_classes(config.model):
        return {}
    return {"num_classes": config.num_classes}


def fresh_model(config: TrainConfig):
    """A new, uncompiled model of the run (its class count given to the builder)."""
    return zoo.create_model(config.model, **class_overrides(config))


def build_model(config: TrainConfig, dataset: data.Dataset):
    """fresh_model, checked: the output must be one probability per class of the data (or the
    target's shape), the input the spec's; a plugin's that is not is a PluginError naming it,
    a zoo model's a ConfigError (zoo/plugins.py). Seeded here: its initial weights are the
    run's seed's wherever it is built (the CLI builds it before the run folder, to check it)."""
    import keras

    keras.utils.set_random_seed(config.seed)
    if config.task == "classification":
        output = (dataset.num_classes,)
    else:
        output = tuple(dataset.y_train.shape[1:])
    model = zoo.checked_model(config.model, output_shape=output, **class_overrides(config))
    if config.init_from is not None:
        from training import finetune

        finetune.start_from(model, config)
    return model


def make_optimizer(config: TrainConfig):
    """The recipe's optimizer with its learning-rate schedule (not yet built)."""
    import keras

    lr = learning_rate_schedule(config)
    return {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[config.optimizer](lr)


def metric_names(task: str) -> list[str]:
    return ["accuracy"] if task == "classification" else []


def steps_per_execution(config: TrainConfig) -> int:
    return execution_chunk(config.steps_per_epoch)


def execution_chunk(steps: int) -> int:
    """The largest divisor of `steps` up to STEPS_PER_EXECUTION: Keras runs whole chunks of
    steps_per_execution, so a chunk that does not divide an epoch trains extra steps."""
    return next(k for k in range(min(STEPS_PER_EXECUTION, steps), 0, -1) if steps % k == 0)


def set_epoch_steps(model, steps: int) -> None:
    """Make a compiled model's train function run chunks that divide `steps` exactly."""
    chunk = execution_chunk(steps)
    if model.steps_per_execution != chunk:
        model.steps_per_execution = chunk
        model.train_function = None  # rebuilt by the next fit with the new chunk


def learning_rate_schedule(config: TrainConfig):
    import keras

    if config.schedule == "constant":
        return config.learning_rate
    warmup = int(round(config.warmup_epochs * config.steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, config.total_steps - warmup),
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def model_dtype(model) -> str:
    """The dtype every trainable variable and every layer's computation has, or "mixed"."""
    dtypes = {v.dtype for v in model.trainable_variables}
    dtypes |= {layer.dtype_policy.compute_dtype for layer in _layers(model)}
    return dtypes.pop() if len(dtypes) == 1 else "mixed"


def _layers(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if hasattr(layer, "dtype_policy")]


def cast_model(model, dtype: str = MEASUREMENT_DTYPE):
    """A copy of a functional/sequential Keras model computing entirely in `dtype` (layers a
    mixed policy pinned to float32 included), with the same weights."""
    config = copy.deepcopy(model.get_config())

    def walk(o):
        if isinstance(o, dict):
            if str(o.get("class_name", "")).endswith("DTypePolicy"):
                o["class_name"] = "DTypePolicy"
                o["config"] = {"name": dtype}
                return
            for k, v in o.items():
                if k == "dtype" and isinstance(v, str):
                    o[k] = dtype
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(config)
    import keras

    # Layers the config does not pin (an InputLayer) take the global policy: make it `dtype`.
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(dtype)
    try:
        clone = model.__class__.from_config(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    weights = [np.asarray(w) for w in model.get_weights()]
    clone.set_weights([w.astype(dtype) if np.issubdtype(w.dtype, np.floating) else w
                       for w in weights])
    if model_dtype(clone) != dtype:
        raise ValueError(f"could not rebuild {model.name} in {dtype}")
    return clone


def measurement_copy(model, dtype: str = MEASUREMENT_DTYPE):
    """`model` itself if it already computes in `dtype`, else a copy that does."""
    return model if model_dtype(model) == dtype else cast_model(model, dtype)


class TestEvaluator:
    """Test-set loss and metrics of a model in float32, however it trains. A compiled float32
    model is evaluated as it is; any other gets one float32 copy (built on first use) into which
    each call copies the current weights."""

    def __init__(self, config: TrainConfig, dataset: data.Dataset):
        self.config = config
        self.pipeline = data.test_pipeline(dataset, limit=config.test_limit)
        self._copy = None

    def __call__(self, model) -> dict[str, float]:
        if model_dtype(model) == MEASUREMENT_DTYPE and getattr(model, "compiled", False):
            probe = model
        else:
            if self._copy is None:
                self._copy = cast_model(model, MEASUREMENT_DTYPE)
                self._copy.compile(loss=self.config.loss, metrics=metric_names(self.config.task))
            else:
                self._copy.set_weights(model.get_weights())
            probe = self._copy
        results = probe.evaluate(self.pipeline, verbose=0, return_dict=True)
        return {k: float(v) for k, v in results.items()}


def evaluate_test_set(model, config: TrainConfig, dataset: data.Dataset) -> dict[str, float]:
    """One float32 evaluation of `model` on the (limited) test set."""
    return TestEvaluator(config, dataset)(model)
