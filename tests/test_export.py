"""Exports, for every registered model: trained a few steps for real, exported, and run back in
SavedModel and ONNX Runtime at two batch sizes against Keras. Plus atomicity and refusal."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

import zoo
from serving.repository import certificate, versions
from tests.conftest import ROOT, subprocess_env
from tests.helpers import TRAIN_LIMIT, tiny_config, tiny_run
from training import data, export, modeling, precision
from training.evaluate import evaluate_export

ALL_MODELS = zoo.list_models()
STEPS = {"deep_cnn": 6}  # the others are cheap enough for more


def _dataset(name, mnist):
    return mnist if zoo.get_spec(name).dataset == "mnist" else data.load_dataset("sinc")


def _fixed_batch_loss(model, ds, n=256):
    x, y = data.as_float_inputs(ds.x_train[:n]), ds.y_train[:n]
    loss = keras.losses.get(zoo.get_spec(model.name).recipe.loss)
    return float(keras.ops.mean(loss(y, model(x, training=False))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_trains_exports_and_agrees_across_runtimes(name, tmp_path, mnist):
    ds = _dataset(name, mnist)
    steps = STEPS.get(name, 40)
    keras.utils.set_random_seed(0)  # the same initial weights train() will start from
    before = _fixed_batch_loss(zoo.create_model(name), ds)
    summary = tiny_run(name, tmp_path / "run", ds, export_dir=tmp_path / "exports", steps=steps)
    trained = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert _fixed_batch_loss(trained, ds) < before, "training did not lower the loss"

    version = tmp_path / "exports" / name / "1"
    assert summary["export"] == str(version)
    for f in ("saved_model.pb", "model.onnx", "metadata.json",
              "assets.extra/tf_serving_warmup_requests"):
        assert (version / f).is_file(), f
    meta = json.loads((version / "metadata.json").read_text())
    spec = zoo.get_spec(name)
    assert meta["name"] == name and meta["version"] == 1
    assert meta["parameters"] == zoo.parameter_count(name)
    assert list(meta["signature"]["inputs"]) == [spec.inputs.name]
    assert meta["data"]["sha256"] == ds.sha256 and meta["data"]["source"] == ds.source
    assert meta["agreement"]["max_abs_diff"]["onnx"] <= 1e-4
    assert meta["packages"]["tensorflow"] == tf.__version__

    # Fresh inputs, two batch sizes, both runtimes, against the trained Keras model.
    x = data.as_float_inputs(ds.x_test[-50:])
    # Against the trained weights in float32 (the export's arithmetic), whatever the policy.
    expected = modeling.measurement_copy(trained).predict(x, verbose=0)
    out_name = export.output_names(spec.task)[0]
    for batch_size in (1, 13):
        for out in (export.run_savedmodel(version, x, batch_size),
                    export.run_onnx(version / "model.onnx", x, batch_size)):
            assert out[out_name].dtype == np.float32
            np.testing.assert_allclose(out[out_name], expected, atol=1e-5)
            if spec.task == "classification":
                assert out["classes"].dtype == np.int64
                assert np.array_equal(out["classes"], expected.argmax(-1))
    assert evaluate_export(version, "onnx", limit=200)["examples"] == 200


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory, mnist):
    root = tmp_path_factory.mktemp("softmax")
    tiny_run("softmax_regression", root / "run", mnist, export_dir=root / "exports", steps=30)
    return root


def test_signature_names_dtypes_and_dynamic_batch(softmax_run):
    version = softmax_run / "exports" / "softmax_regression" / "1"
    fn = tf.saved_model.load(str(version)).signatures["serving_default"]
    inputs = fn.structured_input_signature[1]
    assert list(inputs) == ["images"]
    assert inputs["images"].shape.as_list() == [None, 28, 28]
    assert inputs["images"].dtype == tf.float32
    outs = fn.structured_outputs
    assert outs["probabilities"].dtype == tf.float32 and outs["classes"].dtype == tf.int64
    session = ort.InferenceSession(str(version / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", 28, 28]
    assert sorted(o.name for o in session.get_outputs()) == ["classes", "probabilities"]
    onnx.checker.check_model(onnx.load(str(version / "model.onnx")), full_check=True)


def test_warmup_records_are_prediction_logs(softmax_run):
    from tensorflow_serving.apis import prediction_log_pb2

    path = (softmax_run / "exports" / "softmax_regression" / "1" / "assets.extra"
            / "tf_serving_warmup_requests")
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == len(export.WARMUP_BATCH_SIZES)
    for raw, n in zip(records, export.WARMUP_BATCH_SIZES):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        request = log.predict_log.request
        assert request.model_spec.name == "softmax_regression"
        assert request.model_spec.signature_name == "serving_default"
        assert tf.make_ndarray(request.inputs["images"]).shape == (n, 28, 28)


def test_the_certificate_lists_every_file_and_is_strict_valid_json(softmax_run):
    version = softmax_run / "exports" / "softmax_regression" / "1"
    text = (version / "metadata.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metadata.json"))
    certificate.validate(meta)
    files = sorted(str(p.relative_to(version)) for p in version.rglob("*")
                   if p.is_file() and p.name != "metadata.json")
    assert sorted(meta["files"]) == files
    for rel, entry in meta["files"].items():
        raw = (version / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    assert certificate.verify(version) == meta
    assert meta["training"]["config"]["model"] == "softmax_regression"
    assert meta["test_metrics"]["examples"] == 256  # the tiny run's --test-limit, as a count
    assert 0.0 <= meta["test_metrics"]["accuracy"] <= 1.0


def _negate_onnx_weights(path):
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    for t in proto.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    onnx.save(proto, str(path))


def _flip_a_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("tamper, why", [
    (lambda v: _negate_onnx_weights(v / "model.onnx"), "model.onnx .*certified"),
    (lambda v: _flip_a_byte(next((v / "variables").glob("variables.data-*"))),
     "variables/variables.data-.* differs from its certified sha256"),
    (lambda v: (v / "model.onnx").unlink(), "model.onnx is missing"),
    (lambda v: (v / "saved_model.pb").unlink(), "saved_model.pb is missing"),
    (lambda v: (v / "extra.bin").write_bytes(b"x"), "extra.bin is not in the certificate"),
    (lambda v: (v / "metadata.json").write_text((v / "metadata.json").read_text()[:100]),
     "not strict JSON"),
    (lambda v: (v / "metadata.json").write_text((v / "metadata.json").read_text().replace(
        '"parameters": 7850', '"parameters": NaN')), "NaN is not a number in strict JSON"),
    (lambda v: (v / "metadata.json").write_text((v / "metadata.json").read_text().replace(
        '"task": "classification"', '"task": "art"')), "task: 'art' is not one of"),
    (lambda v: (v / "metadata.json").unlink(), "has no metadata.json"),
])
def test_a_tampered_version_is_refused_by_verify_and_by_evaluate(softmax_run, tmp_path, tamper,
                                                                  why):
    import shutil

    version = tmp_path / "softmax_regression" / "1"
    shutil.copytree(softmax_run / "exports" / "softmax_regression" / "1", version)
    tamper(version)
    with pytest.raises(certificate.CertificateError, match=why):
        certificate.verify(version)
    done = subprocess.run([sys.executable, "-m", "training.evaluate", str(version), "--runtime",
                           "onnx", "--limit", "50"], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_evaluate_refuses_a_limit_below_one(softmax_run, limit):
    version = softmax_run / "exports" / "softmax_regression" / "1"
    done = subprocess.run([sys.executable, "-m", "training.evaluate", str(version), "--limit",
                           limit], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_refuses_other_data_than_the_certificates_unless_allowed(softmax_run, mnist,
                                                                          tmp_path):
    """Test pixels inverted: one line naming both hashes, exit 2; --allow-other-data measures
    them and prints both hashes in full."""
    from tests.data_fixtures import write_npz

    other = tmp_path / "other"
    write_npz(other, {"x_train": mnist.x_train, "y_train": mnist.y_train,
                      "x_test": 255 - mnist.x_test, "y_test": mnist.y_test})
    version = softmax_run / "exports" / "softmax_regression" / "1"
    certified = json.loads((version / "metadata.json").read_text())["data"]["sha256"]
    command = [sys.executable, "-m", "training.evaluate", str(version), "--limit", "100",
               "--data-dir", str(other)]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith("[data]")]
    assert len(lines) == 1 and lines[0].startswith("error: mnist is not the data this version "
                                                   "was certified on"), done.stderr
    assert f"certificate {certified[:12]}): give those data" in lines[0] and done.stdout == ""
    allowed = subprocess.run([*command, "--allow-other-data"], cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: measuring on other data" in allowed.stderr, allowed.stderr
    assert f"certificate {certified}" in allowed.stderr
    assert "accuracy" in allowed.stdout and "on 100 test examples" in allowed.stdout


def test_evaluate_says_how_many_examples_the_certificate_measured(softmax_run):
    version = softmax_run / "exports" / "softmax_regression" / "1"
    done = subprocess.run([sys.executable, "-m", "training.evaluate", str(version), "--limit",
                           "100"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "on 100 test examples" in done.stdout and "on 256 test examples)" in done.stdout


def test_a_diverged_run_stops_with_one_line_and_exports_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "training.train", "sinc_shallow_300_tanh", "--lr", "1e30",
         "--steps", "20", "--run-dir", str(tmp_path / "run"), "--export-dir",
         str(tmp_path / "exports")], cwd=ROOT, env=subprocess_env(), capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "training loss became nan by step" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "exports").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.keras"))


def test_non_finite_outputs_are_a_disagreement(tmp_path, mnist):
    precision.apply("float32")
    model = zoo.create_model("softmax_regression")
    weights = model.get_weights()
    weights[0][:] = np.nan
    model.set_weights(weights)
    with pytest.raises(export.ExportError, match="not finite"):
        export.export_model(model, tiny_config("softmax_regression"), mnist, {}, tmp_path)
    assert list((tmp_path / "softmax_regression").iterdir()) == []


def test_export_cli_writes_the_next_version(softmax_run):
    done = subprocess.run(
        [sys.executable, "-m", "training.export", str(softmax_run / "run"),
         "--export-dir", str(softmax_run / "exports")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("softmax_regression/2")
    meta = json.loads((softmax_run / "exports/softmax_regression/2/metadata.json").read_text())
    assert meta["version"] == 2



@pytest.fixture
def small_filesystem(tmp_path):
    """A real 64 KiB tmpfs (too small for a SavedModel), unmounted pass or fail; skipped where
    this process may not mount."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_at_export_is_one_line_naming_the_device(softmax_run, small_filesystem):
    done = subprocess.run(
        [sys.executable, "-m", "training.export", str(softmax_run / "run"),
         "--export-dir", str(small_filesystem)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    assert lines == [
        f"error: no space left on tmpfs (tmpfs, mounted at {small_filesystem}) while "
        f"exporting to {small_filesystem / 'softmax_regression'}; nothing was published, and "
        "nothing half-written is left"], done.stderr
    left = sorted(str(p.relative_to(small_filesystem)) for p in small_filesystem.rglob("*"))
    assert left == ["softmax_regression"], left  # the model folder, empty: no version, no .tmp-*


def test_a_disagreeing_export_is_refused_and_leaves_nothing(tmp_path, mnist, monkeypatch):
    """The ONNX file written is perturbed (the weights into class 0 moved by 1e-3) before the
    check runs: the check must see the difference, refuse, and leave no version behind."""
    import onnx
    from onnx import numpy_helper

    write_onnx = export.write_onnx

    def write_then_perturb(serve, signature, path):
        write_onnx(serve, signature, path)
        proto = onnx.load(str(path))
        biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        w = numpy_helper.to_array(biggest).copy()
        w[..., 0] += 1e-3  # every weight into class 0
        biggest.CopyFrom(numpy_helper.from_array(w, biggest.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(export, "write_onnx", write_then_perturb)
    precision.apply("float32")
    model = zoo.create_model("softmax_regression")
    model.set_weights([np.random.default_rng(0).normal(0, 0.01, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    with pytest.raises(export.ExportError, match="onnx .*export refused"):
        export.export_model(model, tiny_config("softmax_regression"), mnist, {}, tmp_path)
    assert list((tmp_path / "softmax_regression").iterdir()) == []


def test_a_mixed_precision_model_exports_float32(tmp_path, mnist):
    summary = tiny_run("mlp_128", tmp_path / "run", mnist, export_dir=tmp_path / "exports",
                       steps=5, policy="mixed_bfloat16")
    meta = json.loads((tmp_path / "exports/mlp_128/1/metadata.json").read_text())
    assert summary["config"]["precision"] == "mixed_bfloat16"
    assert meta["signature"]["inputs"]["images"]["dtype"] == "float32"
    assert meta["agreement"]["max_abs_diff"]["savedmodel"] <= 1e-5
    # bf16 training graph vs the float32 export graph: close, but not the same arithmetic.
    assert 0.0 < meta["agreement"]["max_abs_diff_vs_training_precision"] < 0.1


@pytest.mark.slow
def test_an_export_killed_midway_leaves_no_version(tmp_path, mnist):
    tiny_run("deep_cnn", tmp_path / "run", mnist, steps=2, batch_size=16)
    exports = tmp_path / "exports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.export", str(tmp_path / "run"), "--export-dir",
         str(exports)], cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    model_dir = exports / "deep_cnn"
    deadline = time.monotonic() + 180
    # Kill it once the temporary holds a SavedModel but before anything is published.
    while time.monotonic() < deadline and not list(model_dir.glob(".tmp-*/saved_model.pb")):
        assert proc.poll() is None, "export ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(model_dir.glob(".tmp-*")), "the kill came too late to test anything"
    assert not versions.scan(model_dir).versions

    # The next export cleans the dead temporary and publishes version 1.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train_limit"] == TRAIN_LIMIT
    done = subprocess.run(
        [sys.executable, "-m", "training.export", str(tmp_path / "run"), "--export-dir",
         str(exports)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def test_stale_temporaries_are_judged_by_their_lock_not_their_pid(tmp_path):
    from training.export import remove_stale_temporaries, temporary_dir

    # Named after a live PID (ours) but nobody holds its lock: a killed exporter whose PID was
    # reused. It is stale.
    reused = tmp_path / f".tmp-{os.getpid()}-aaaaaa"
    reused.mkdir()
    (tmp_path / f"{reused.name}.lock").touch()
    no_lock = tmp_path / ".tmp-1-bbbbbb"
    no_lock.mkdir()
    # A live exporter in another process holds its lock: kept.
    live = tmp_path / ".tmp-2-cccccc"
    live.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(tmp_path / f"{live.name}.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with temporary_dir(tmp_path) as ours:  # and our own, in this process
            remove_stale_temporaries(tmp_path)
            assert ours.exists() and live.exists()
            assert not reused.exists() and not no_lock.exists()
            assert not (tmp_path / f"{reused.name}.lock").exists()
        assert not ours.exists() and not list(tmp_path.glob(f"{ours.name}*"))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    remove_stale_temporaries(tmp_path)  # its holder died: the kernel released its flock
    assert not live.exists()
    assert not list(tmp_path.iterdir())


def test_the_next_version_follows_the_one_rule_for_version_names(tmp_path):
    """Names that are no version (a Unicode digit, beyond int64, leading zeros) are skipped, not
    a crash; a file with a version name is taken all the same (rename(2) could not replace it)."""
    for name in ("1", "²", "99999999999999999999", "007", ".tmp-1-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "4").write_text("")
    assert export.next_version(tmp_path) == 5
