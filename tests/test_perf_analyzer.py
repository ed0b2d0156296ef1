"""Triton's perf_analyzer drives our server as it drives Triton and TF Serving: its triton kind
over our Open Inference Protocol, gRPC and HTTP (it asks ModelConfig first, and reads the
server's statistics around each window), and its tfserving kind over TF Serving's Predict on
gRPC, against a real server process. Skipped, with the reason, where
perf_analyzer cannot run (benchmarks/perf_analyzer.py installs it: `make perf-analyzer`)."""

from __future__ import annotations

import re
import subprocess

import pytest

from benchmarks import perf_analyzer
from tests.serving_fixtures import ServerProcess, exported, write_config  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("perf-analyzer")
    config = write_config(tmp / "models.config",
                          {"softmax_regression": {"base": exported / "softmax_regression"}})
    s = ServerProcess("--model_config_file", str(config), "--backend", "onnx",
                      log=tmp / "server.log")
    yield s
    assert s.stop() == 0, s.logs()


@pytest.mark.parametrize("kind, protocol", [("triton", "grpc"), ("triton", "http"),
                                            ("tfserving", "grpc")])
def test_perf_analyzer_drives_our_server(server, kind, protocol, tmp_path):
    prefix, reason = perf_analyzer.locate()
    if prefix is None:
        pytest.skip(reason)
    report = tmp_path / "report.csv"
    cmd = [*prefix, "-m", "softmax_regression", "--service-kind", kind, "-i", protocol,
           "-u", server.address if protocol == "grpc" else server.rest, "-b", "4",
           "--concurrency-range", "1:1", "-p", "300", "-s", "100", "-r", "3", "-f", str(report)]
    if kind == "tfserving":
        cmd += ["--shape", "images:28,28"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + server.logs()
    assert "Throughput" in done.stdout, done.stdout
    header, row = report.read_text().splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("Inferences/Second")]) > 0
    if kind == "triton":  # the server side of the window, from our statistics extension
        counts = re.findall(r"Server:\s+Inference count: (\d+)", done.stdout)
        assert counts and int(counts[-1]) > 0, done.stdout
