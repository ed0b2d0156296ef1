"""The Keras model zoo: what each model is. Pure Keras: no I/O, no training."""

from zoo import function_approximators, mnist_classifiers  # noqa: F401  (registers the models)
from zoo.plugins import PluginError, checked_model, load_plugins
from zoo.registry import (
    InputSignature,
    ModelSpec,
    Recipe,
    Reference,
    UnknownModelError,
    create_model,
    describe_origin,
    get_spec,
    list_models,
    origin,
    parameter_count,
    register,
)

__all__ = [
    "InputSignature",
    "ModelSpec",
    "Recipe",
    "Reference",
    "PluginError",
    "UnknownModelError",
    "checked_model",
    "create_model",
    "describe_origin",
    "get_spec",
    "list_models",
    "load_plugins",
    "origin",
    "parameter_count",
    "register",
]
