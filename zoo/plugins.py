"""Models from outside the repository (docs/ARCHITECTURE.md, "Plugins").

A plugin is a Python module whose import registers models with `zoo.register`, the way timm's
`@register_model` works from any module. It comes in three ways, all loaded by `load_plugins`:

- `--models-from MODULE_OR_FILE` (repeatable): a dotted module name, or a path to a `.py` file;
- `$ZOO_MODELS`: the same references, `os.pathsep`-separated;
- an installed distribution's entry points in the group `keras_model_zoo.models` (found with
  `importlib.metadata`, as pytest finds its plugins): each names a module, or a function that
  registers models when called.

A plugin the user named that cannot be loaded is a PluginError, one line naming it; a broken
entry point is a one-line warning naming its distribution, and the rest of the zoo still works.
Whatever a failed plugin had registered is removed again. Loading is idempotent, so a run's
recorded plugin (`TrainConfig.plugin`) can be loaded again by `--resume` beside the same flag.

Custom layers of a plugin model register with `keras.saving.register_keras_serializable`: its
checkpoints load again once the plugin is imported, and its export (a traced graph) is served
without it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from zoo import registry

ENTRY_POINT_GROUP = "keras_model_zoo.models"
ENV_MODELS = "ZOO_MODELS"

# reference key -> plugin record, for every plugin loaded in this process.
_LOADED: dict[tuple[str, str], dict] = {}
_ENTRY_POINTS_DONE = False


class PluginError(Exception):
    """A plugin the user named is broken: one line naming it and what went wrong."""


def load_plugins(models_from: Iterable[str] = (), entry_points: bool = True,
                 warn=None) -> list[dict]:
    """Load `$ZOO_MODELS`, then each `--models-from` reference, then (once per process) every
    installed entry point. Returns the records of the plugins named by the user."""
    named = [(f"${ENV_MODELS}", ref) for ref in
             os.environ.get(ENV_MODELS, "").split(os.pathsep) if ref.strip()]
    named += [("--models-from", ref) for ref in models_from]
    records = [load_plugin(ref, how) for how, ref in named]
    if entry_points:
        load_entry_points(warn)
    return records


def load_plugin(ref: str, how: str = "--models-from") -> dict:
    """Import one module (dotted name) or file (ending in .py, or a path) and return its record:
    {"module": NAME} or {"file": ABSOLUTE_PATH, "sha256": ...}."""
    ref = ref.strip()
    is_file = ref.endswith(".py") or os.sep in ref
    if is_file:
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"{how} {ref}: no such file (expected a .py file, or a dotted "
                              "module name)")
        key = ("file", str(path))
        record = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    else:
        key = ("module", ref)
        record = {"module": ref}
    if key in _LOADED:
        return _LOADED[key]
    imported_before = not is_file and ref in sys.modules  # e.g. as an entry point's module
    try:
        with registering(record) as added:
            if is_file:
                _import_file(path)
            else:
                importlib.import_module(ref)
    except Exception as e:  # noqa: BLE001 - whatever a user's module raises, it is the module's
        raise PluginError(f"{how} {ref}: {_one_line(e)}") from None
    if not added and not imported_before:
        print(f"[plugins] warning: {how} {ref} registered no model", file=sys.stderr)
    _LOADED[key] = record
    return record


def registering(record: dict):
    return registry.registering_for(record)


def _import_file(path: Path) -> None:
    """Import a .py file as a module of its own (in sys.modules, so that pickling, Keras'
    serialization and tracebacks find it), under a name no other file can take."""
    name = f"zoo_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_entry_points(warn=None) -> list[dict]:
    """Every entry point of the group, once per process; a broken one is a warning naming its
    distribution (printed, or passed to `warn`) and is left out."""
    global _ENTRY_POINTS_DONE
    if _ENTRY_POINTS_DONE:
        return []
    _ENTRY_POINTS_DONE = True
    warn = warn or (lambda line: print(line, file=sys.stderr))
    records, seen = [], set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        record = {"entry_point": ep.name, "value": ep.value,
                  "distribution": dist.name if dist else "?",
                  "version": dist.version if dist else ""}
        key = (record["distribution"], ep.name)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        try:
            with registering(record):
                loaded = ep.load()
                if callable(loaded) and not inspect.ismodule(loaded):
                    loaded()
        except Exception as e:  # noqa: BLE001 - a broken package must not break the zoo
            warn(f"[plugins] warning: entry point {ep.name} ({ep.value}) of distribution "
                 f"{record['distribution']} {record['version']} cannot be loaded "
                 f"({_one_line(e)}); its models are left out")
            continue
        records.append(record)
    return records


def load_recorded(record: dict | None) -> None:
    """Load again the plugin a run was trained with (its config.json's `plugin`)."""
    if record is None:
        return
    if "file" in record:
        path = Path(record["file"])
        if path.is_file() and record.get("sha256") and (
                hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]):
            print(f"[plugins] warning: {path} has changed since the run started "
                  "(its sha256 differs from the run's config.json)", file=sys.stderr)
        load_plugin(record["file"], "the run's plugin file")
    elif "module" in record:
        load_plugin(record["module"], "the run's plugin module")
    else:
        load_entry_points()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def checked_model(name: str, output_shape: tuple[int, ...] | None = None, **overrides):
    """zoo.create_model, and for a plugin's model a check that it is what its spec says: a
    builder that raises, or returns anything but a Keras model whose input is the spec's and
    whose output is `output_shape` (batch dimension left out), is a PluginError naming the
    plugin. The zoo's own builders are trusted (a failure there is a bug, with its traceback)."""
    import keras

    plugin = registry.origin(name)
    if plugin is None:
        return registry.create_model(name, **overrides)
    where = registry.describe_origin(plugin)
    spec = registry.get_spec(name)
    try:
        model = registry.create_model(name, **overrides)
    except Exception as e:  # noqa: BLE001 - the plugin's code
        raise PluginError(f"{where}: the builder of {name} raised {_one_line(e)}") from None
    if not isinstance(model, keras.Model):
        raise PluginError(f"{where}: the builder of {name} returned {type(model).__name__}, "
                          "not a keras.Model")
    got_in = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if got_in != tuple(spec.inputs.shape):
        raise PluginError(f"{where}: {name} takes inputs of shape {model.input_shape}; its spec "
                          f"says (None, {', '.join(map(str, spec.inputs.shape))})")
    got_out = model.output_shape
    if output_shape is not None and (isinstance(got_out, list)
                                     or tuple(got_out[1:]) != tuple(output_shape)):
        what = (f"{output_shape[0]} class probabilities" if spec.task == "classification"
                else f"outputs of shape (None, {', '.join(map(str, output_shape))})")
        raise PluginError(f"{where}: {name} outputs {got_out}; its {spec.task} task on this "
                          f"data needs {what}")
    return model
