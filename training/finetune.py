"""Start a run from a trained version (docs/ARCHITECTURE.md, "Fine-tuning").

`--init-from PATH`: an exported version (verified against its certificate first; its weights
are the SavedModel's variables, which the export tracks in the model's own order) or a run folder
(its `model.keras`). The new model is built for the new data; every layer whose weights have the
parent's shapes takes them, and the others (a classifier's head when the class count differs)
keep their fresh initialisation. `--freeze-backbone` trains only the layers that were not
copied (or, with no new head, the last layer with weights); `--trainable-from LAYER` trains
that layer and every one after it. The run's config and the certificate record the parent.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from serving.repository import certificate
from training import keras_files


class InitError(ValueError):
    """--init-from names nothing usable, or weights that do not fit: one line."""


def describe_parent(path: Path) -> dict:
    """The parent's record: {"path", "kind", "model", "version", "certificate_sha256"}."""
    path = Path(path).resolve()
    if (path / certificate.FILENAME).is_file():
        try:
            meta = certificate.verify(path)
        except certificate.CertificateError as e:
            raise InitError(f"--init-from {path}: {e}") from None
        digest = hashlib.sha256((path / certificate.FILENAME).read_bytes()).hexdigest()
        outputs = meta["signature"]["outputs"]
        classes = outputs["probabilities"]["shape"][-1] if "probabilities" in outputs else None
        return {"path": str(path), "kind": "export", "model": meta["zoo_model"],
                "name": meta["name"], "version": meta["version"], "certificate_sha256": digest,
                "num_classes": classes, "plugin": meta.get("plugin")}
    if (path / "model.keras").is_file() and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        return {"path": str(path), "kind": "run", "model": config["model"],
                "num_classes": config.get("num_classes"), "plugin": config.get("plugin"),
                "model_sha256": hashlib.sha256((path / "model.keras").read_bytes()).hexdigest()}
    raise InitError(f"--init-from {path} is neither an exported version (NAME/VERSION with "
                    "metadata.json) nor a finished run folder (with model.keras)")


def parent_weights(parent: dict) -> list[np.ndarray]:
    """The parent's variables, in its model's order."""
    path = Path(parent["path"])
    if parent["kind"] == "export":
        import tensorflow as tf

        return [v.numpy() for v in tf.saved_model.load(str(path)).variables]
    return [np.asarray(v) for v in _run_model(path).variables]


def _run_model(run_dir: Path):
    try:
        return keras_files.load_model(run_dir / "model.keras")
    except keras_files.ModelFileError as e:
        raise InitError(str(e)) from None


def trained_model(source: str | Path, export_dir: str | Path = "exported_models"):
    """A trained Keras model, for notebooks and scripts:

        from training.finetune import trained_model
        model = trained_model("exported_models/deep_cnn/3")   # a version, certificate verified
        model = trained_model("deep_cnn")                     # its newest version in export_dir
        model = trained_model("runs/deep_cnn/20261207-1200-s0")  # a finished run folder

    The model is the zoo's (or the recorded plugin's) architecture with the version's weights;
    it takes the same raw inputs as the served signature."""
    path = Path(source)
    if not path.exists():
        base = Path(export_dir) / str(source)
        numbers = sorted(int(p.name) for p in base.iterdir()
                         if p.name.isdigit()) if base.is_dir() else []
        if not numbers:
            raise InitError(f"{source} is no exported version, run folder, or model with a "
                            f"version under {export_dir}")
        path = base / str(numbers[-1])
    parent = describe_parent(path)
    if parent["kind"] == "run":
        import zoo

        config = json.loads((path / "config.json").read_text())
        zoo.plugins.load_recorded(config.get("plugin"))
        return _run_model(path)
    return parent_model(parent)


def parent_model(parent: dict):
    """A model of the parent's architecture and class count holding the parent's weights."""
    import zoo

    zoo.plugins.load_recorded(parent.get("plugin"))
    k = parent.get("num_classes")
    takes = zoo.registry.takes_num_classes(parent["model"])
    model = zoo.create_model(parent["model"], **({"num_classes": k} if k and takes else {}))
    weights = parent_weights(parent)
    if len(weights) != len(model.variables):
        raise InitError(f"--init-from {parent['path']} holds {len(weights)} variables, a "
                        f"{parent['model']} has {len(model.variables)}")
    for v, w in zip(model.variables, weights):
        if tuple(v.shape) != w.shape:
            raise InitError(f"--init-from {parent['path']}: {v.path} has shape {w.shape}, "
                            f"a {parent['model']} {tuple(v.shape)}")
        v.assign(w)
    return model


def start_from(model, config) -> None:
    """Initialise a fresh model of the run `config` from its parent, as the config says."""
    parent = config.init_from
    fresh = initialise(model, parent_model(parent), config.freeze_backbone,
                       config.trainable_from)
    trained = [la.name for la in model.layers if la.trainable and la.weights]
    print(f"[init] {config.model} from {parent['path']}; new: {', '.join(fresh) or 'none'}; "
          f"trained: {', '.join(trained)}", file=sys.stderr)


def initialise(model, parent_model, freeze_backbone: bool = False,
               trainable_from: str | None = None) -> list[str]:
    """Copy `parent_model`'s weights into `model` layer by layer where the shapes agree;
    return the names of the layers left fresh."""
    sources = {layer.name: layer for layer in parent_model.layers}
    fresh = []
    for layer in model.layers:
        if not layer.weights:
            continue
        src = sources.get(layer.name)
        if src is not None and [w.shape for w in src.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(src.get_weights())
        else:
            fresh.append(layer.name)
    names = [layer.name for layer in model.layers]
    if trainable_from is not None:
        if trainable_from not in names:
            raise InitError(f"--trainable-from {trainable_from}: no such layer; the model has "
                            f"{', '.join(n for n in names if model.get_layer(n).weights)}")
        first = names.index(trainable_from)
        for i, layer in enumerate(model.layers):
            layer.trainable = i >= first
    elif freeze_backbone:
        head = set(fresh) or {next(la.name for la in reversed(model.layers) if la.weights)}
        for layer in model.layers:
            layer.trainable = layer.name in head
    return fresh
