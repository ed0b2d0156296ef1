"""Fine-tuning from a trained version (training/finetune.py) through the real CLI: a new head
for another number of classes, a frozen backbone, the parent in the certificate, refusals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, subprocess_env
from tests.test_own_data import write_folder

SMALL = ("--precision", "float32", "--seed", "0", "--test-limit", "200")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """mlp_128 trained 40 steps on MNIST and exported: (export base, version dir, run dir)."""
    tmp = tmp_path_factory.mktemp("parent")
    done = cli("mlp_128", "--steps", "40", "--train-limit", "4000", "--run-dir",
               str(tmp / "run"), "--export-dir", str(tmp / "exported"), *SMALL)
    assert done.returncode == 0, done.stderr
    return tmp / "exported", tmp / "exported" / "mlp_128" / "1", tmp / "run"


def savedmodel_weights(version):
    import tensorflow as tf

    return {v.name.split(":")[0]: v.numpy() for v in tf.saved_model.load(str(version)).variables}


@pytest.mark.slow
def test_a_new_head_on_a_frozen_backbone_with_the_parent_certified(parent, tmp_path, mnist):
    base, version, _ = parent
    folder = write_folder(tmp_path / "digits", mnist, per_class=20)
    done = cli("mlp_128", "--init-from", str(version), "--freeze-backbone", "--dataset",
               str(folder), "--steps", "10", "--batch-size", "16", "--run-dir",
               str(tmp_path / "ft"), "--export-dir", str(base), *SMALL)
    assert done.returncode == 0, done.stderr
    assert "new: logits; trained: logits" in done.stderr
    child = base / "mlp_128_digits" / "1"
    meta = json.loads((child / "metadata.json").read_text())
    assert meta["parent"]["model"] == "mlp_128" and meta["parent"]["version"] == 1
    assert meta["parent"]["certificate_sha256"] == hashlib.sha256(
        (version / "metadata.json").read_bytes()).hexdigest()
    assert meta["signature"]["outputs"]["probabilities"]["shape"] == [-1, 3]
    before, after = savedmodel_weights(version), savedmodel_weights(child)
    np.testing.assert_array_equal(before["hidden1/kernel"], after["hidden1/kernel"])  # frozen
    assert before["logits/kernel"].shape == (128, 10) and after["logits/kernel"].shape == (128, 3)


@pytest.mark.slow
def test_a_run_folder_starts_a_run_and_trainable_from_unfreezes_the_rest(parent, tmp_path):
    _, _, run = parent
    done = cli("mlp_128", "--init-from", str(run), "--trainable-from", "logits", "--steps", "4",
               "--train-limit", "1000", "--run-dir", str(tmp_path / "ft"), "--no-export", *SMALL)
    assert done.returncode == 0, done.stderr
    assert "new: none; trained: logits" in done.stderr
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["init_from"]["kind"] == "run" and config["trainable_from"] == "logits"


@pytest.mark.slow
def test_refusals_are_one_line_before_training(parent, tmp_path):
    _, version, _ = parent
    cases = {
        ("--freeze-backbone",): "--freeze-backbone and --trainable-from need --init-from",
        ("--init-from", str(tmp_path)): "is neither an exported version",
        ("--init-from", str(version), "--trainable-from", "nope"):
            "--trainable-from nope: no such layer",
    }
    for args, message in cases.items():
        done = cli("mlp_128", *args, "--steps", "2", "--no-export", "--run-dir",
                   str(tmp_path / "r"), *SMALL)
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    other = cli("softmax_regression", "--init-from", str(version), "--steps", "2", "--no-export",
                *SMALL)
    assert other.returncode == 2 and "is a mlp_128; it can start a mlp_128" in other.stderr
    tampered = tmp_path / "tampered"
    import shutil

    shutil.copytree(version, tampered)
    (tampered / "model.onnx").write_bytes(b"changed")
    done = cli("mlp_128", "--init-from", str(tampered), "--steps", "2", "--no-export", *SMALL)
    assert done.returncode == 2 and "does not match its certificate" in done.stderr


@pytest.mark.slow
def test_trained_model_gives_the_version_as_keras_for_a_path_or_a_name(parent, mnist):
    from training.export import run_savedmodel
    from training.finetune import InitError, trained_model

    base, version, run = parent
    x = mnist.x_test[:64].astype(np.float32)
    served = run_savedmodel(version, x, 64)["probabilities"]
    for model in (trained_model(version), trained_model("mlp_128", export_dir=base)):
        np.testing.assert_allclose(model.predict(x, verbose=0), served, atol=1e-5)
    assert trained_model(run).count_params() == trained_model(version).count_params()
    with pytest.raises(InitError, match="no exported version, run folder, or model"):
        trained_model("no_such_model", export_dir=base)
