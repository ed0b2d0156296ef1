"""Fixtures for the serving tests: real exports made with the train CLI, real server processes.

Set ZOO_SERVING_ADDRESS (gRPC HOST:PORT) and ZOO_SERVING_REST (HOST:PORT) to run the contract
suite against a server that is already running, e.g. the real tensorflow_model_server started
with the models.config these fixtures write (softmax_regression with label "stable" -> 1, and
deep_cnn). Set ZOO_SERVING_TEST_MODELS to a model base path already holding both models to skip
the two short trainings.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("softmax_regression", "deep_cnn")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_export(model: str, base: Path, run_dir: Path, steps: int) -> Path:
    subprocess.run(
        [sys.executable, "-m", "training.train", model, "--steps", str(steps),
         "--train-limit", "3000", "--test-limit", "500", "--export-dir", str(base),
         "--run-dir", str(run_dir), "--seed", "0", "--precision", "float32"],
        cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return base / model / "1"


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """A model base path with version 1 of softmax_regression and deep_cnn (real exports)."""
    given = os.environ.get("ZOO_SERVING_TEST_MODELS")
    if given:
        return Path(given)
    base = tmp_path_factory.mktemp("exported_models")
    runs = tmp_path_factory.mktemp("runs")
    train_export("softmax_regression", base, runs / "softmax", 30)
    train_export("deep_cnn", base, runs / "cnn", 3)
    return base


@pytest.fixture(scope="session")
def digits():
    """The first 64 MNIST test digits as raw float32 0-255, and their labels."""
    from serving.client import mnist_test

    return mnist_test(64)


def copy_model(exported: Path, model: str, dest: Path, versions=(1,)) -> Path:
    """A private model directory with the given version numbers, each a copy of version 1."""
    target = dest / model
    target.mkdir(parents=True, exist_ok=True)
    for v in versions:
        shutil.copytree(exported / model / "1", target / str(v))
    return target


def write_config(path: Path, models: dict[str, dict]) -> Path:
    """models: name -> {"base": Path, "policy": text, "labels": {label: version}}."""
    parts = []
    for name, m in models.items():
        labels = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n'
                         for k, v in m.get("labels", {}).items())
        policy = f"    model_version_policy {{ {m['policy']} }}\n" if m.get("policy") else ""
        parts.append(f'  config {{\n    name: "{name}"\n    base_path: "{m["base"]}"\n'
                     f'    model_platform: "tensorflow"\n{policy}{labels}  }}\n')
    path.write_text("model_config_list {\n" + "".join(parts) + "}\n")
    return path


# Every ServerProcess ever started, so that conftest.py stops those a test started (pass or fail).
STARTED: list[ServerProcess] = []


class ServerProcess:
    """`python -m serving.server ...` on free 127.0.0.1 ports; waits until its health service
    says SERVING (`ca_file`: the server's certificate, for a TLS server; `env`: more environment
    variables)."""

    def __init__(self, *args: str, log: Path, rest: bool = True, timeout: float = 120,
                 ca_file: Path | None = None, env: dict[str, str] | None = None):
        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        self.address = f"127.0.0.1:{self.port}"
        self.rest = f"127.0.0.1:{self.rest_port}"
        self.log_path = log
        self._log = open(log, "w")
        cmd = [sys.executable, "-m", "serving.server", "--port", str(self.port),
               "--rest_api_port", str(self.rest_port), *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        STARTED.append(self)
        import grpc

        from serving.clients import readiness

        credentials = (grpc.ssl_channel_credentials(Path(ca_file).read_bytes()) if ca_file
                       else None)
        if readiness.wait_serving(self.address, timeout, lambda: self.proc.poll() is None,
                                  credentials):
            return
        self.stop()
        if self.proc.returncode not in (0, None) and "did not" not in self.logs():
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def write_gated_model(base: Path, gate: Path, arrived: Path) -> Path:
    """A SavedModel (base/1) whose every call first leaves a file in `arrived`, then waits until
    the file `gate` exists: a request whose duration the test controls, on any CPU.
    Signature serving_default: x float32 [N, 4] -> y = x."""
    import tensorflow as tf

    arrived.mkdir(parents=True, exist_ok=True)

    class Gated(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            name = tf.strings.as_string(tf.random.uniform([], 0, 2**62, dtype=tf.int64))
            marked = tf.io.write_file(tf.strings.join([str(arrived), "/", name]), "")
            with tf.control_dependencies([marked]):
                start = tf.constant(0, tf.int64)

            def closed(i):
                # The pattern depends on i (an empty suffix), so no optimiser hoists the look.
                pattern = tf.strings.join([str(gate), tf.strings.substr(
                    tf.strings.as_string(i), 0, 0)])
                return tf.equal(tf.size(tf.io.matching_files(pattern)), 0)

            spins = tf.while_loop(closed, lambda i: i + 1, [start])
            return {"y": x + 0.0 * tf.cast(spins, tf.float32)}

    module = Gated()
    path = base / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def predict_request(model="softmax_regression", x=None, **spec):
    """A PredictRequest for `model` (spec: version, version_label, signature_name) with `x` as
    its "images" input, if given."""
    from tensorflow_serving.apis import predict_pb2

    from serving.runtime import tensors

    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    for k, v in spec.items():
        if k == "version":
            r.model_spec.version.value = v
        else:
            setattr(r.model_spec, k, v)
    if x is not None:
        tensors.to_proto(np.asarray(x), r.inputs["images"])
    return r


def wait_for(condition, timeout: float = 60, interval: float = 0.1, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def onnx_reference(version_dir: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {s.get_inputs()[0].name: x})))


def data_planes() -> list[str]:
    """The --data_plane values the contract suite runs against: ZOO_SERVING_DATA_PLANE alone
    when set, else both planes (native is skipped, saying why, where predictd is not built)."""
    plane = os.environ.get("ZOO_SERVING_DATA_PLANE")
    return [plane] if plane else ["python", "native"]


@pytest.fixture(scope="session", params=data_planes())
def contract_server(request, exported, tmp_path_factory):
    """(gRPC address, REST address, local export base or None) of the server under contract,
    once per data plane (docs/ARCHITECTURE.md, "The native data plane")."""
    if os.environ.get("ZOO_SERVING_ADDRESS"):
        if request.param != data_planes()[0]:
            pytest.skip("ZOO_SERVING_ADDRESS: the server given is tested once")
        yield (os.environ["ZOO_SERVING_ADDRESS"], os.environ.get("ZOO_SERVING_REST"), None)
        return
    if request.param == "native":
        from serving.native import plane

        if not plane.built():
            pytest.skip(f"--data_plane {request.param}: {plane.BINARY} is not built (make native)")
    tmp = tmp_path_factory.mktemp("contract")
    config = write_config(tmp / "models.config", {
        "softmax_regression": {"base": exported / "softmax_regression",
                               "labels": {"stable": 1}},
        "deep_cnn": {"base": exported / "deep_cnn"},
    })
    server = ServerProcess("--model_config_file", str(config), "--max_request_bytes",
                           str(8 << 20), "--data_plane", request.param,
                           log=tmp / "server.log")
    yield (server.address, server.rest, exported)
    assert server.stop() == 0, server.logs()
