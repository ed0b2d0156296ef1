"""Models from outside the repository (zoo/plugins.py) through the real CLIs: a plugin file with
a custom Keras layer trained, resumed, exported, evaluated and served by the unchanged server;
an installed-style entry point; every refusal of a broken plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

import zoo
from tests import plugin_fixtures
from tests.conftest import ROOT, subprocess_env
from tests.serving_fixtures import ServerProcess, onnx_reference, predict_request

SMALL = ("--train-limit", "512", "--test-limit", "128", "--precision", "float32", "--seed", "0")


def cli(module: str, *args: str, pythonpath: str | None = None, timeout: int = 300,
        **env: str) -> subprocess.CompletedProcess:
    extra = {"PYTHONPATH": os.pathsep.join([str(ROOT), pythonpath])} if pythonpath else {}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=subprocess_env(**extra, **env), capture_output=True, text=True,
                          timeout=timeout)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """my_net (a Gain layer of its own) from a plugin file: trained 2 epochs without export,
    then resumed (checkpoint with the custom layer loaded again, plugin from config.json) and
    exported. (plugin file, run dir, version dir)."""
    tmp = tmp_path_factory.mktemp("plugin")
    plugin = plugin_fixtures.write_plugin(tmp / "user")
    run, base = tmp / "run", tmp / "exported"
    first = cli("training.train", "my_net", "--models-from", str(plugin), "--epochs", "2",
                "--steps-per-epoch", "4", "--run-dir", str(run), "--no-export", *SMALL)
    assert first.returncode == 0, first.stderr
    resumed = cli("training.train", "--resume", str(run), "--export-dir", str(base))
    assert resumed.returncode == 0, resumed.stderr
    return plugin, run, base / "my_net" / "1", resumed


def test_list_shows_a_plugin_file_and_an_entry_point_with_their_origins(tmp_path):
    plugin = plugin_fixtures.write_plugin(tmp_path / "user")
    site = plugin_fixtures.write_distribution(
        tmp_path / "site", "acme-zoo-models", "acme_models",
        plugin_fixtures.PLUGIN.replace("{name}", "acme_net").replace("{classes}", "10"))
    done = cli("training.train", "--list", "--models-from", str(plugin), pythonpath=str(site))
    assert done.returncode == 0, done.stderr
    rows = {ln.split()[0]: ln for ln in done.stdout.splitlines()[1:]}
    assert "the zoo" in rows["deep_cnn"]
    assert f"file {plugin}" in rows["my_net"]
    assert "distribution acme-zoo-models 0.1" in rows["acme_net"]
    params = zoo.parameter_count("softmax_regression")
    assert f"{params:,}" in rows["softmax_regression"]


def test_zoo_models_env_is_a_path_list(tmp_path):
    a = plugin_fixtures.write_plugin(tmp_path, name="net_a", file="a.py")
    b = plugin_fixtures.write_plugin(tmp_path, name="net_b", file="b.py")
    done = cli("training.train", "--list", ZOO_MODELS=os.pathsep.join([str(a), str(b)]))
    assert done.returncode == 0, done.stderr
    assert f"file {a}" in done.stdout and f"file {b}" in done.stdout


def test_a_broken_entry_point_is_one_warning_naming_its_distribution(tmp_path):
    site = plugin_fixtures.write_distribution(tmp_path / "site", "broken-dist", "broken_mod",
                                              "raise RuntimeError('half written')\n",
                                              version="2.3")
    done = cli("training.train", "--list", pythonpath=str(site))
    assert done.returncode == 0, done.stderr
    warnings = [ln for ln in done.stderr.splitlines() if "broken-dist" in ln]
    assert len(warnings) == 1 and "broken-dist 2.3" in warnings[0]
    assert "RuntimeError: half written" in warnings[0] and "Traceback" not in done.stderr
    assert "deep_cnn" in done.stdout


@pytest.mark.parametrize("kind", sorted(plugin_fixtures.BROKEN))
def test_a_broken_plugin_is_one_line_naming_it_and_exit_2(tmp_path, kind):
    path = plugin_fixtures.write_broken(tmp_path / "user", kind)
    run = tmp_path / "run"
    done = cli("training.train", "my_net", "--models-from", str(path), "--steps", "2",
               "--run-dir", str(run), "--no-export", *SMALL)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert str(path) in line and plugin_fixtures.BROKEN[kind][1] in line, line
    assert "Traceback" not in done.stderr
    assert not run.exists() or not any(run.iterdir())  # nothing half-written


def test_a_missing_plugin_and_an_analysis_study_refuse_the_same_way(tmp_path):
    done = cli("training.train", "--list", "--models-from", str(tmp_path / "nope.py"))
    assert done.returncode == 2 and error_lines(done) == [
        f"error: --models-from {tmp_path / 'nope.py'}: no such file (expected a .py file, or "
        "a dotted module name)"]
    broken = plugin_fixtures.write_broken(tmp_path, "import_error")
    done = cli("analysis.digits", "--models-from", str(broken), "--quick",
               "--out", str(tmp_path / "reports"))
    assert done.returncode == 2, done.stderr
    assert len(error_lines(done)) == 1 and str(broken) in done.stderr


def test_a_failed_plugin_leaves_nothing_registered(tmp_path):
    path = tmp_path / "half.py"
    path.write_text(plugin_fixtures.PLUGIN.replace("{name}", "half_net")
                    .replace("{classes}", "10") + "\nraise ImportError('late')\n")
    with pytest.raises(zoo.PluginError, match="ImportError: late"):
        zoo.plugins.load_plugin(str(path))
    assert "half_net" not in zoo.list_models()


@pytest.mark.slow
def test_a_plugin_model_trains_resumes_exports_and_evaluates(plugin_run):
    plugin, run, version, resumed = plugin_run
    config = json.loads((run / "config.json").read_text())
    assert config["plugin"]["file"] == str(plugin)
    assert "[resume]" in resumed.stderr
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["plugin"]["file"] == str(plugin) and meta["zoo_model"] == "my_net"
    assert meta["agreement"]["max_abs_diff"]["onnx"] <= meta["agreement"]["tolerance"]
    # The export is measured without the plugin: evaluate reads the version alone.
    done = cli("training.evaluate", str(version), "--runtime", "onnx", "--limit", "128")
    assert done.returncode == 0, done.stderr
    assert "my_net v1 (onnx): accuracy" in done.stdout


@pytest.mark.slow
def test_the_unchanged_server_serves_a_plugin_model_over_grpc_and_rest(plugin_run, tmp_path):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.client import mnist_test
    from serving.runtime import tensors

    _, _, version, _ = plugin_run
    x, _ = mnist_test(4)
    expected = onnx_reference(version, x[:4])
    server = ServerProcess("--model_name", "my_net", "--model_base_path", str(version.parent),
                           log=tmp_path / "server.log")
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(predict_request("my_net", x[:4]), timeout=30)
    probabilities = tensors.to_ndarray(reply.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-4)
    body = json.dumps({"instances": x[:4].tolist()}).encode()
    request = urllib.request.Request(f"http://{server.rest}/v1/models/my_net:predict", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        predictions = json.loads(r.read())["predictions"]
    assert [p["classes"] for p in predictions] == expected["classes"].tolist()
    assert server.stop() == 0
