"""Export a trained model as the next version of exported_models/NAME/
(docs/ARCHITECTURE.md, "Exported model").

    python -m training.export RUN_DIR [--export-dir exported_models]

A version holds a float32 SavedModel with a named `serving_default` signature, TF Serving warmup
records, the same graph as `model.onnx`, and `metadata.json`, the model's certificate. It is built
in a hidden temporary sibling, checked (SavedModel and ONNX Runtime against Keras on real test
inputs at two batch sizes, onnx.checker), and only then renamed into place: a server polling the
folder sees a whole version or none, and a refused or killed export leaves no version behind.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import importlib.metadata
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

import zoo
from serving import quiet
from serving.repository import certificate, versions
from training import data, data_paths, keras_files, modeling, precision
from training.config import TrainConfig

ONNX_OPSET = 17
TOLERANCE = 1e-4  # refuse an export whose runtimes disagree with Keras by more than this
CHECK_EXAMPLES = 1000
SECOND_BATCH_SIZE = 37  # an odd size, so the last batch is partial: the batch dim is dynamic
WARMUP_BATCH_SIZES = (1, 8)
PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy",
            "tensorflow-serving-api")


class ExportError(RuntimeError):
    pass


def export_name(config: TrainConfig) -> str:
    """A model trained on another dataset than its spec's is another servable: it must never
    become the next version of the spec's own name (a server would switch to it silently)."""
    spec = zoo.get_spec(config.model)
    if config.dataset == spec.dataset:
        return config.model
    # A path's last part, in the characters a model name may hold.
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.dataset).stem) or "data"
    return f"{config.model}_{tail}"


def output_names(task: str) -> tuple[str, ...]:
    return ("probabilities", "classes") if task == "classification" else ("y",)


def serving_function(model, spec):
    """The `serving_default` signature: named inputs and outputs, batch dimension dynamic."""
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *spec.inputs.shape), tf.float32, name=spec.inputs.name)]
    if spec.task == "classification":

        @tf.function(input_signature=signature)
        def serve(inputs):
            probabilities = model(inputs, training=False)
            classes = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "classes": classes}
    else:

        @tf.function(input_signature=signature)
        def serve(inputs):
            return {"y": model(inputs, training=False)}

    return serve, signature


def export_model(model, config: TrainConfig, dataset: data.Dataset, summary: dict,
                 export_base: Path = Path("exported_models"),
                 tolerance: float = TOLERANCE, check_examples: int = CHECK_EXAMPLES) -> Path:
    """Write, check and publish the next version of `export_base/NAME`; return its path."""
    spec = zoo.get_spec(config.model)
    modeling.check_against_spec(model, config, f"the model of run {summary.get('run_dir')}")
    model_dir = Path(export_base) / export_name(config)
    with _disk_full_is_one_line(model_dir):
        version, agreement = _write_and_publish(model, config, spec, dataset, summary,
                                                model_dir, tolerance, check_examples)
    print(f"[export] {model_dir / str(version)}: max |Keras - SavedModel| "
          f"{agreement['max_abs_diff']['savedmodel']:.2e}, max |Keras - ONNX Runtime| "
          f"{agreement['max_abs_diff']['onnx']:.2e} on {agreement['examples']} test inputs",
          file=sys.stderr)
    return model_dir / str(version)


def _write_and_publish(model, config: TrainConfig, spec, dataset: data.Dataset, summary: dict,
                       model_dir: Path, tolerance: float,
                       check_examples: int) -> tuple[int, dict]:
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(model_dir)
    with temporary_dir(model_dir) as tmp:
        inference = modeling.cast_model(model, "float32")  # always a float32 graph
        serve, signature = serving_function(inference, spec)
        write_saved_model(inference, serve, tmp)
        x_check = data.as_float_inputs(dataset.x_test[:check_examples])
        write_warmup_requests(tmp, export_name(config), spec.inputs.name, x_check)
        write_onnx(serve, signature, tmp / "model.onnx")
        agreement = check_export(tmp, inference, model, spec, x_check, tolerance)
        test_metrics = modeling.evaluate_test_set(inference, config, dataset)
        metadata = build_metadata(config, spec, dataset, summary, inference, agreement,
                                  test_metrics)
        return publish(tmp, model_dir, metadata), agreement


# What a full disk or an exhausted quota says: OSError's errno from Python's own writes; from
# TensorFlow's (the SavedModel, the warmup records) only the text of a ResourceExhaustedError.
_FULL = {errno.ENOSPC: ("No space left on device", "no space left"),
         errno.EDQUOT: ("Disk quota exceeded", "disk quota exceeded")}


@contextlib.contextmanager
def _disk_full_is_one_line(model_dir: Path):
    """A full disk while exporting is one ExportError naming the device; the temporary is
    already gone (temporary_dir), so nothing half-written is left."""
    try:
        yield
    except Exception as e:
        said = (_FULL.get(e.errno, (None, None))[1] if isinstance(e, OSError)
                else next((words for text, words in _FULL.values() if text in str(e)), None))
        if said is None:
            raise
        raise ExportError(f"{said} on {device_of(model_dir)} while exporting to "
                          f"{model_dir}; nothing was published, and nothing half-written is "
                          "left") from None


def device_of(path: Path) -> str:
    """The filesystem holding `path` as /proc/self/mountinfo names it: its source, its type
    and where it is mounted (e.g. "/dev/sda1 (ext4, mounted at /)")."""
    while not path.exists():
        path = path.parent
    st = os.stat(path)
    wanted = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):  # the last mount over a point is the visible one
        fields = line.split()
        if len(fields) > 9 and fields[2] == wanted and " - " in line:
            fstype, source = line.split(" - ", 1)[1].split()[:2]
            return f"{source} ({fstype}, mounted at {fields[4]})"
    return f"the device {wanted}"


@contextlib.contextmanager
def temporary_dir(model_dir: Path):
    """A fresh `.tmp-*` directory for one export, removed unless published. Its exporter holds
    an flock on `.tmp-*.lock` while it lives; the kernel drops the lock when the process dies
    however it dies, so a lock that can be taken marks a stale temporary (a PID could be
    reused by an unrelated process; a lock cannot)."""
    name = f".tmp-{os.getpid()}-{os.urandom(3).hex()}"
    lock_path, pending = model_dir / f"{name}.lock", model_dir / f".lock-{name}"
    # Locked under a name the cleaner ignores, then renamed (same inode, same lock): a cleaner
    # never sees an unlocked lock file of a live exporter. A kill inside these two lines leaves
    # an empty .lock-* file behind, nothing else.
    with open(pending, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(pending, lock_path)
        tmp = model_dir / name
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already if it was published
            lock_path.unlink(missing_ok=True)


def remove_stale_temporaries(model_dir: Path) -> None:
    """Delete temporaries (and lone lock files) left by exports that were killed."""
    for path in model_dir.glob(".tmp-*"):
        tmp = path.with_suffix("") if path.suffix == ".lock" else path
        lock_path = tmp.with_name(tmp.name + ".lock")
        if _exporter_alive(lock_path):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        lock_path.unlink(missing_ok=True)


def _exporter_alive(lock_path: Path) -> bool:
    try:
        with open(lock_path) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False  # a temporary without its lock was never (or is no longer) owned
    except BlockingIOError:
        return True
    return False


def write_saved_model(model, serve, path: Path) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve)
    archive.write_out(str(path), verbose=False)


def write_warmup_requests(path: Path, name: str, input_name: str, x: np.ndarray) -> None:
    """assets.extra/tf_serving_warmup_requests: PredictionLog records TF Serving replays on load."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    target = path / "assets.extra"
    target.mkdir()
    with tf.io.TFRecordWriter(str(target / "tf_serving_warmup_requests")) as writer:
        for n in WARMUP_BATCH_SIZES:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.model_spec.signature_name = "serving_default"
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(x[:n]))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def write_onnx(serve, signature, path: Path) -> None:
    import onnx
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=ONNX_OPSET)
    # Name the dynamic batch dimension instead of tf2onnx's generated "unk__N".
    for value in [*proto.graph.input, *proto.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = "batch"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def run_savedmodel(path: Path, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    input_name = next(iter(fn.structured_input_signature[1]))
    return _batched(lambda b: {k: v.numpy() for k, v in fn(**{input_name: tf.constant(b)}).items()},
                    x, batch_size)


def run_onnx(path: Path, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    return _batched(lambda b: dict(zip(names, session.run(names, {input_name: b}))), x, batch_size)


def _batched(fn, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    parts = [fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_export(version_dir: Path, inference, trained, spec, x: np.ndarray,
                 tolerance: float) -> dict:
    """Compare both runtimes with the float32 Keras model at two batch sizes; refuse on mismatch."""
    main_output = output_names(spec.task)[0]
    expected = inference.predict(x, batch_size=256, verbose=0).astype(np.float32)
    runs = {}
    for runtime, runner, target in (("savedmodel", run_savedmodel, version_dir),
                                    ("onnx", run_onnx, version_dir / "model.onnx")):
        for batch_size in (len(x), SECOND_BATCH_SIZE):
            runs[(runtime, batch_size)] = runner(target, x, batch_size)
    if not np.all(np.isfinite(expected)):
        raise ExportError("the model's own outputs are not finite (NaN or infinity): it is "
                          "not a model to certify; export refused")
    diffs = {}
    for (runtime, batch_size), out in runs.items():
        if not np.all(np.isfinite(out[main_output])):
            raise ExportError(f"{runtime} at batch size {batch_size} gives non-finite outputs; "
                              "export refused")
        d = float(np.max(np.abs(out[main_output] - expected)))
        diffs[runtime] = max(diffs.get(runtime, 0.0), d)
        if spec.task == "classification" and not np.array_equal(
                out["classes"], expected.argmax(-1)):
            raise ExportError(f"{runtime} at batch size {batch_size} predicts different classes "
                              "from Keras; export refused")
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        raise ExportError(
            f"{worst} output differs from Keras by {diffs[worst]:.3g} > tolerance {tolerance:g}; "
            "export refused")
    # Informative only: how far the float32 graph is from the policy the model trained in.
    trained_out = trained.predict(x, batch_size=256, verbose=0).astype(np.float32)
    return {
        "examples": int(len(x)),
        "batch_sizes": [int(len(x)), SECOND_BATCH_SIZE],
        "tolerance": tolerance,
        "max_abs_diff": diffs,
        "max_abs_diff_vs_training_precision": float(np.max(np.abs(trained_out - expected))),
        "identical_classes": spec.task == "classification",
    }


def build_metadata(config: TrainConfig, spec, dataset: data.Dataset, summary: dict, inference,
                   agreement: dict, test_metrics: dict) -> dict:
    outputs = {
        "probabilities": {"dtype": "float32", "shape": [-1, dataset.num_classes]},
        "classes": {"dtype": "int64", "shape": [-1]},
    } if spec.task == "classification" else {"y": {"dtype": "float32", "shape": [-1, 1]}}
    test_examples = min(len(dataset.x_test), config.test_limit or len(dataset.x_test))
    return {
        "format": certificate.FORMAT,
        "name": export_name(config),
        "zoo_model": config.model,
        # Where the model's code came from (None: the zoo); serving never needs it.
        "plugin": config.plugin,
        # The version or run it was fine-tuned from (training/finetune.py), None: from scratch.
        "parent": config.init_from,
        "task": spec.task,
        "description": spec.description,
        "parameters": int(inference.count_params()),
        "signature": {
            "name": "serving_default",
            "inputs": {spec.inputs.name: {"dtype": "float32", "shape": [-1, *spec.inputs.shape],
                                          "description": spec.inputs.description}},
            "outputs": outputs,
        },
        "training": {
            "config": config.to_json(),
            "epochs_completed": summary.get("epochs_completed"),
            # Where it was stopped and resumed; its weights are the uninterrupted run's.
            "resumed_at_epochs": summary.get("resumed_at_epochs", []),
            "train_seconds": summary.get("train_seconds"),
            "run_dir": summary.get("run_dir"),
        },
        "data": {"dataset": config.dataset, "source": dataset.source, "sha256": dataset.sha256,
                 **({"class_names": list(dataset.class_names)} if dataset.class_names else {}),
                 **dataset.details},
        "test_metrics": {**test_metrics, "examples": test_examples},
        "reference": {
            "metric": spec.reference.metric,
            "target": spec.reference.target,
            "provenance": spec.reference.provenance,
            **dict(zip(("met", "not_measured"), modeling.reference_verdict(
                spec, config, dataset, test_metrics["accuracy"]
                if spec.reference.metric == "accuracy" else test_metrics["loss"]), strict=True)),
        },
        "onnx": {"file": "model.onnx", "opset": ONNX_OPSET},
        "agreement": agreement,
        "packages": {p: _version(p) for p in PACKAGES},
        "python": sys.version.split()[0],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def publish(tmp: Path, model_dir: Path, metadata: dict) -> int:
    """Rename the finished temporary into the next free version number. rename(2) is atomic, and
    fails if another exporter took that number first; then the next number is tried."""
    metadata["files"] = certificate.list_files(tmp)  # every file but metadata.json itself
    while True:
        version = next_version(model_dir)
        metadata["version"] = version
        try:
            text = certificate.dumps(metadata)  # strict JSON, valid against the schema
        except certificate.CertificateError as e:
            raise ExportError(f"the certificate would not be valid: {e}; export refused") from None
        (tmp / certificate.FILENAME).write_text(text)
        try:
            os.rename(tmp, model_dir / str(version))
            return version
        except OSError:
            if not (model_dir / str(version)).exists():
                raise


def next_version(model_dir: Path) -> int:
    """One above every version name under `model_dir` (serving/repository/versions.py's rule)."""
    try:
        return versions.next_version(model_dir)
    except versions.NoVersionLeft as e:
        raise ExportError(f"{e}; export refused") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export",
                                description="Export a finished training run as the next version.")
    quiet.add_verbose_flag(p)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--export-dir", type=Path, default=Path("exported_models"))
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args(argv)
    import json

    try:
        config = TrainConfig.read(args.run_dir / "config.json")
        zoo.plugins.load_recorded(config.plugin)
        summary_path = args.run_dir / "summary.json"
        if not (args.run_dir / "model.keras").exists():
            raise FileNotFoundError(f"{args.run_dir} has no model.keras: the run has not finished "
                                    f"(resume it with python -m training.train --resume)")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        spec = zoo.get_spec(config.model)
        dataset = data_paths.load_dataset(config.dataset, args.data_dir, seed=config.seed,
                                    task=spec.task, input_shape=spec.inputs.shape,
                                    test_fraction=config.test_fraction,
                                    skip_unreadable=config.skip_unreadable)
        precision.apply(config.precision)
        model = keras_files.load_model(args.run_dir / "model.keras")
        path = export_model(model, config, dataset, summary, args.export_dir)
    except (FileNotFoundError, ExportError, data.DataSourceError, zoo.PluginError, ValueError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
