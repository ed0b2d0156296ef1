"""The client CLI: every user mistake is one readable line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serving_fixtures import ENV, ROOT, contract_server, exported  # noqa: F401


def client_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.client", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--rest", "bad host:xx", "list"], "is not HOST:PORT"),
    (["--rest", "127.0.0.1:1", "list"], "Connection refused"),
    (["--ca-file", "/nonexistent", "status", "m"], "cannot read /nonexistent"),
    (["predict", "m", "--mnist-test", "0"], "--mnist-test: must be at least 1, got 0"),
    (["predict", "m", "--mnist-test", "-5"], "--mnist-test: must be at least 1, got -5"),
    (["predict", "m", "--mnist-test", "5", "--batch-size", "0"],
     "--batch-size: must be at least 1, got 0"),
])
def test_user_mistakes_are_one_line(args, message):
    done = client_cli(*args)
    assert done.returncode in (1, 2) and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_rest_pointed_at_the_grpc_port_is_one_line(contract_server):  # noqa: F811
    done = client_cli("--rest", contract_server[0], "list")
    assert done.returncode == 1 and "is --rest the REST port?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_protocol_v2_classifies_as_tf_serving_predict(contract_server):  # noqa: F811
    """`--protocol v2` (tritonclient's gRPC client inside) prints the same classes as TF
    Serving's Predict from the same server."""
    if contract_server[2] is None:
        pytest.skip("the Open Inference Protocol is this project's server's, not TF Serving's")
    address = contract_server[0]
    runs = [client_cli("--address", address, *protocol, "predict", "deep_cnn",
                       "--mnist-test", "40", "--batch-size", "16")
            for protocol in ([], ["--protocol", "v2"])]
    for done in runs:
        assert done.returncode == 0, done.stderr
    lines = [[line for line in done.stdout.splitlines() if line.startswith(("digit", "accuracy"))]
             for done in runs]
    assert len(lines[0]) == 21 and lines[0] == lines[1], runs[1].stdout
    meta = client_cli("--address", address, "--protocol", "v2", "metadata", "softmax_regression")
    assert meta.returncode == 0, meta.stderr
    assert "images: FP32 [-1,28,28]" in meta.stdout and "classes: INT64 [-1]" in meta.stdout
    status = client_cli("--address", address, "--protocol", "v2", "status", "deep_cnn")
    assert status.returncode == 0 and "deep_cnn v1: READY" in status.stdout, status.stderr
    for args, message in ((["status", "nothing"], "NOT_FOUND"),
                          (["predict", "softmax_regression", "--label", "stable",
                            "--mnist-test", "1"], "no version labels")):
        done = client_cli("--address", address, "--protocol", "v2", *args)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
