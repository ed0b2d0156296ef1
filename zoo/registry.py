"""The model registry: one place that says what every zoo model is.

A spec is data (frozen dataclasses); the builder is the only code. Parameter counts are never
stored: `parameter_count(name)` builds the model and counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterator
from typing import Literal

import keras

Task = Literal["classification", "regression"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model is trained by default. Every field can be overridden from the train CLI."""

    optimizer: Literal["sgd", "adam"]
    learning_rate: float
    batch_size: int
    epochs: int
    # None means one full pass over the training set per epoch.
    steps_per_epoch: int | None = None
    # "constant", or "warmup_cosine": linear warmup over `warmup_epochs`, then cosine decay to 0.
    schedule: Literal["constant", "warmup_cosine"] = "constant"
    warmup_epochs: float = 0.0
    loss: str = "sparse_categorical_crossentropy"


@dataclasses.dataclass(frozen=True)
class Reference:
    """The result a model must reach with its default recipe, and where that number comes from."""

    metric: Literal["accuracy", "mse"]
    # accuracy: at least this; mse: at most this.
    target: float
    provenance: str
    # What the report itself measured, when it gave a number.
    report_value: float | None = None

    def met_by(self, value: float) -> bool:
        return value >= self.target if self.metric == "accuracy" else value <= self.target


@dataclasses.dataclass(frozen=True)
class InputSignature:
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str = "float32"
    description: str = ""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., keras.Model]
    task: Task
    dataset: str
    inputs: InputSignature
    recipe: Recipe
    reference: Reference
    description: str
    # Other datasets the model also trains on (same input shape), e.g. fashion_mnist.
    alt_datasets: tuple[str, ...] = ()

    @property
    def datasets(self) -> tuple[str, ...]:
        return (self.dataset, *self.alt_datasets)


_REGISTRY: dict[str, ModelSpec] = {}
# Where each model came from: None for the zoo's own, else the plugin record (zoo/plugins.py)
# that was being loaded when it registered.
_ORIGINS: dict[str, dict | None] = {}
_LOADING: list[dict] = []  # the plugin being imported now (innermost last)


class UnknownModelError(KeyError):
    def __init__(self, name: str):
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        self.message = f"unknown model {name!r}.{hint} Known models: {', '.join(known)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def register(spec: ModelSpec | None = None, /, **fields):
    """Add a model to the registry; a name can be registered once, a second time raises.

    As a decorator over the builder, the spec's other fields as keywords (`name` defaults to the
    builder's name); the builder is returned unchanged:

        @register(task="classification", dataset="mnist", inputs=..., recipe=..., ...)
        def softmax_regression() -> keras.Model: ...

    Or with a whole spec, for builders made in a loop: `register(ModelSpec(...))`."""
    if spec is None:
        def decorator(builder: Callable[..., keras.Model]):
            register(ModelSpec(**{"name": builder.__name__, **fields, "builder": builder}))
            return builder

        return decorator
    if fields:
        raise TypeError("register(spec) takes no other arguments")
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered "
                         f"(by {describe_origin(_ORIGINS.get(spec.name))})")
    _REGISTRY[spec.name] = spec
    _ORIGINS[spec.name] = _LOADING[-1] if _LOADING else None
    return spec


@contextlib.contextmanager
def registering_for(plugin: dict) -> Iterator[list[str]]:
    """Models registered inside are the plugin's; if the block raises, every one of them is
    removed again, so that a broken plugin leaves no half of itself in the registry. Yields the
    names registered so far."""
    before = set(_REGISTRY)
    added: list[str] = []
    _LOADING.append(plugin)
    try:
        yield added
        added.extend(n for n in _REGISTRY if n not in before)
    except BaseException:
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]
            del _ORIGINS[name]
        raise
    finally:
        _LOADING.pop()


def origin(name: str) -> dict | None:
    """The plugin record a model came from (zoo/plugins.py), None for the zoo's own."""
    get_spec(name)
    return _ORIGINS.get(name)


def describe_origin(plugin: dict | None) -> str:
    """One phrase: "the zoo", "module my_models", "file /x/my_net.py", "distribution d 1.0"."""
    if plugin is None:
        return "the zoo"
    if "distribution" in plugin:
        return f"distribution {plugin['distribution']} {plugin.get('version', '')}".rstrip()
    if "file" in plugin:
        return f"file {plugin['file']}"
    return f"module {plugin['module']}"


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(name) from None


def list_models(pattern: str = "*", exclude: str | None = None) -> list[str]:
    """Registered names matching a shell-style glob, sorted."""
    names = [n for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, pattern)]
    if exclude:
        names = [n for n in names if not fnmatch.fnmatchcase(n, exclude)]
    return names


def create_model(name: str, **overrides) -> keras.Model:
    """Build a fresh, uncompiled model. None-valued overrides are dropped so that CLI defaults
    never shadow the builder's own."""
    spec = get_spec(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    return spec.builder(**kwargs)


def takes_num_classes(name: str) -> bool:
    """Whether the model's builder takes `num_classes` (the zoo's classifiers do)."""
    try:
        return "num_classes" in inspect.signature(get_spec(name).builder).parameters
    except (TypeError, ValueError):
        return False


def parameter_count(name: str) -> int:
    return int(create_model(name).count_params())
