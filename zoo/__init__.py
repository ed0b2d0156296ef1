"""The Keras model zoo: what each model is. Pure Keras: no I/O, no training."""

from zoo import function_approximators, mnist_classifiers  # noqa: F401  (registers the models)
from zoo.registry import (
    InputSignature,
    ModelSpec,
    Recipe,
    Reference,
    UnknownModelError,
    create_model,
    get_spec,
    list_models,
    parameter_count,
    register,
)

__all__ = [
    "InputSignature",
    "ModelSpec",
    "Recipe",
    "Reference",
    "UnknownModelError",
    "create_model",
    "get_spec",
    "list_models",
    "parameter_count",
    "register",
]
