# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""The server's Prometheus metrics (serving/observability/metrics.py): TF Serving's names and
format, every request counted under its own code, names that are not served collapsed to one
placeholder label, queue/compute/batch histograms. Unit tests in-process (fast, no server), then
one real server."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.core.errors import ServingError, not_found
from serving.observability import metrics
from serving.observability.metrics import UNKNOWN_MODEL, Metrics
from tests.serving_fixtures import ServerProcess, exported, predict_request  # noqa: F401

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, read from the exposition text line by line (the names
    exactly as written: prometheus_client's parser would add _total to TF Serving's counters).
    The page must also parse as Prometheus text."""
    list(text_string_to_metric_families(text))
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.fullmatch(r"([^{ ]+)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        out[(m[1], labels)] = float(m[3])
    return out


def value(page: dict, name: str, **labels) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


def label_values(page: dict, name: str, label: str) -> set[str]:
    return {dict(k[1])[label] for k in page if k[0] == name and label in dict(k[1])}


# ------------------------------------------------------------------------------ unit tests
def test_requests_are_counted_under_their_code_and_only_successes_timed():
    m = Metrics(served=lambda name: name == "m")
    for code in ("OK", "OK", "NOT_FOUND", "INVALID_ARGUMENT", "OK"):
        m.request("m", "Predict", "GRPC", code, 0.002)
    m.request("m", "predict", "REST", "UNAVAILABLE", 0.5)
    page = samples(m.render())
    assert {k[1]: v for k, v in page.items() if k[0] == COUNT} == {
        frozenset({("model_name", "m"), ("status", s)}): n
        for s, n in (("OK", 3), ("NOT_FOUND", 1), ("INVALID_ARGUMENT", 1), ("UNAVAILABLE", 1))}
    grpc_labels = {"model_name": "m", "API": "Predict", "entrypoint": "GRPC"}
    assert value(page, LATENCY + "_count", **grpc_labels) == 3  # TF Serving times successes only
    assert value(page, LATENCY + "_sum", **grpc_labels) == pytest.approx(6000)  # microseconds
    assert value(page, LATENCY + "_bucket", le="+Inf", **grpc_labels) == 3
    assert value(page, LATENCY + "_bucket", le="1983.59", **grpc_labels) == 0
    assert value(page, LATENCY + "_bucket", le="3570.47", **grpc_labels) == 3
    assert not label_values(page, LATENCY + "_count", "entrypoint") - {"GRPC"}


def test_tf_serving_names_types_and_buckets():
    m = Metrics(served=lambda name: True)
    m.request("m", "Predict", "GRPC", "OK", 0.001)
    m.batch("m", 1, "serving_default", 8)
    text = m.render()
    lines = text.splitlines()
    # TF Serving's counters have no _total suffix; prometheus_client's _created series are gone.
    assert f"# TYPE {COUNT} counter" in lines
    assert f'{COUNT}{{model_name="m",status="OK"}} 1.0' in lines
    assert "# TYPE :tensorflow:serving:batching_session:wrapped_run_count counter" in lines
    assert ":tensorflow:serving:batching_session:wrapped_run_count 1.0" in lines
    assert "_total" not in text and "_created" not in text
    # TF's Buckets::Exponential(10, 1.8, 33) and (100, 1.2, 52), as TF prints them, then +Inf.
    bounds = re.findall(r'^:tensorflow:serving:request_latency_bucket\{.*le="([^"]+)"', text,
                        re.M)
    assert bounds[:5] == ["10.0", "18.0", "32.4", "58.32", "104.976"] and len(bounds) == 34
    assert bounds[-1] == "+Inf" and float(bounds[-2]) == pytest.approx(10 * 1.8 ** 32, rel=1e-5)
    assert len(metrics.QUEUING_LATENCY_BUCKETS) == 52
    assert metrics.QUEUING_LATENCY_BUCKETS[:3] == (100.0, 120.0, 144.0)


def test_names_that_are_not_served_collapse_to_one_label():
    served = {"m"}
    m = Metrics(served=served.__contains__)
    m.request("bogus", "Predict", "GRPC", "NOT_FOUND", 0.001)
    one = m.render()
    for i in range(20_000):
        m.request(f"bogus-{i}", "Predict", "GRPC", "NOT_FOUND", 0.001)
        m.request(f"bogus-{i}", "predict", "REST", "OK", 0.001)  # not even a success adds one
    text = m.render()
    assert "bogus" not in text
    page = samples(text)
    assert label_values(page, COUNT, "model_name") == {UNKNOWN_MODEL}
    assert value(page, COUNT, model_name=UNKNOWN_MODEL, status="NOT_FOUND") == 20_001
    assert len(text) < 2 * len(one) + 20_000, len(text)  # bounded: one label set more, not 20k
    served.add("new")  # a model served later gets its own label from then on
    m.request("new", "Predict", "GRPC", "OK", 0.001)
    assert value(samples(m.render()), COUNT, model_name="new", status="OK") == 1


def test_track_counts_the_outcome_of_its_block():
    m = Metrics(served=lambda name: name == "m")

    async def outcomes():
        with m.track("m", "Predict", "GRPC"):
            pass
        for error, unexpected in ((not_found("no such version"), "UNKNOWN"),
                                  (ServingError(grpc.StatusCode.UNAVAILABLE, "full"), "UNKNOWN"),
                                  (ValueError("a bug"), "UNKNOWN"),
                                  (KeyError("a bug"), "INTERNAL")):
            with pytest.raises(type(error)), m.track("m", "Predict", "GRPC", unexpected):
                raise error

        async def cancelled():
            with m.track("m", "Predict", "GRPC"):
                await asyncio.sleep(60)
        task = asyncio.ensure_future(cancelled())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(outcomes())
    page = samples(m.render())
    assert {dict(k[1])["status"]: v for k, v in page.items() if k[0] == COUNT} == {
        "OK": 1, "NOT_FOUND": 1, "UNAVAILABLE": 1, "UNKNOWN": 1, "INTERNAL": 1, "CANCELLED": 1}


def test_queue_compute_and_batch_series():
    m = Metrics(served=lambda name: True)
    key = ("m", 3, "serving_default")
    labels = {"model": "m", "version": "3", "signature": "serving_default"}
    m.run(*key, 0.0002, 0.004)                    # an unbatched request
    m.batch_queue(*key, 5)
    m.batch(*key, 8)                              # a batch of 8 rows (after padding)
    m.batch_run(*key, [0.001, 0.003], 0.02)       # ... of two requests
    m.batch_queue(*key, 0)
    page = samples(m.render())
    assert value(page, "zoo_serving_queue_seconds_count", **labels) == 3
    assert value(page, "zoo_serving_queue_seconds_sum", **labels) == pytest.approx(0.0042)
    assert value(page, "zoo_serving_compute_seconds_count", **labels) == 3
    assert value(page, "zoo_serving_compute_seconds_sum", **labels) == pytest.approx(0.044)
    assert value(page, "zoo_serving_compute_seconds_bucket", le="0.005", **labels) == 1
    assert value(page, "zoo_serving_batch_size_sum", **labels) == 8
    assert value(page, "zoo_serving_batch_size_bucket", le="4.0", **labels) == 0
    assert value(page, "zoo_serving_batch_size_bucket", le="8.0", **labels) == 1
    assert ("zoo_serving_batch_queue_rows", frozenset(labels.items())) in page
    queuing = ":tensorflow:serving:batching_session:queuing_latency"
    assert value(page, queuing + "_count", thread_pool_name=metrics.BATCH_THREAD_POOL) == 2
    assert value(page, queuing + "_sum", thread_pool_name=metrics.BATCH_THREAD_POOL) == \
        pytest.approx(4000)
    m.forget_queue(*key)  # the version is unloaded: its queue gauge goes
    assert ("zoo_serving_batch_queue_rows", frozenset(labels.items())) not in samples(m.render())


def test_worker_label_only_in_a_workers_server():
    single = Metrics(served=lambda name: True)
    single.request("m", "Predict", "GRPC", "OK", 0.001)
    assert "zoo_serving_worker_requests" not in single.render()
    worker = Metrics(served=lambda name: True, worker=1)
    worker.request("m", "Predict", "GRPC", "OK", 0.001)
    worker.request("x", "Predict", "GRPC", "NOT_FOUND", 0.001)
    assert 'zoo_serving_worker_requests_total{worker="1"} 2.0' in worker.render().splitlines()


# ------------------------------------------------------------------------------ a real server
@pytest.mark.slow
def test_server_counts_every_code_and_collapses_unknown_names(exported, tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"
                      "num_batch_threads { value: 1 }\n")
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--model_name", "softmax_regression", "--backend", "onnx",
                           "--enable_batching", "--batching_parameters_file", str(params),
                           log=tmp_path / "server.log")
    x = np.zeros((1, 28, 28), np.float32)

    def grpc_predict(name="softmax_regression", array=x, **spec):
        request = predict_request(name, array, **spec)
        try:
            stub.Predict(request, timeout=30)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    def rest_predict(name="softmax_regression", body=None):
        body = json.dumps({"instances": x.tolist()}).encode() if body is None else body
        request = urllib.request.Request(f"http://{server.rest}/v1/models/{name}:predict", body)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert [grpc_predict() for _ in range(3)] == ["OK"] * 3
            assert [grpc_predict(f"bogus-{i}") for i in range(5)] == ["NOT_FOUND"] * 5
            assert grpc_predict(version=99) == "NOT_FOUND"
            assert grpc_predict(array=np.zeros((1, 28, 27), np.float32)) == "INVALID_ARGUMENT"
            assert grpc_predict(signature_name="bogus_signature") == "FAILED_PRECONDITION"
        assert [rest_predict() for _ in range(2)] == [200] * 2
        assert [rest_predict(f"bogus-rest-{i}") for i in range(5)] == [404] * 5
        assert rest_predict(body=b"{not json") == 400  # refused before the model is reached
        with urllib.request.urlopen(f"http://{server.rest}/monitoring/prometheus/metrics",
                                    timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
    finally:
        assert server.stop() == 0, server.logs()
    assert "bogus" not in text
    page = samples(text)
    counts = {tuple(sorted(dict(k[1]).items())): v for k, v in page.items() if k[0] == COUNT}
    model = "softmax_regression"
    assert counts == {
        (("model_name", model), ("status", "OK")): 5,
        (("model_name", model), ("status", "NOT_FOUND")): 1,
        (("model_name", model), ("status", "INVALID_ARGUMENT")): 2,
        (("model_name", model), ("status", "FAILED_PRECONDITION")): 1,
        (("model_name", UNKNOWN_MODEL), ("status", "NOT_FOUND")): 10,
    }
    assert value(page, LATENCY + "_count", model_name=model, API="Predict",
                 entrypoint="GRPC") == 3
    assert value(page, LATENCY + "_count", model_name=model, API="predict",
                 entrypoint="REST") == 2
    labels = {"model": model, "version": "1", "signature": "serving_default"}
    assert value(page, "zoo_serving_queue_seconds_count", **labels) == 5
    assert value(page, "zoo_serving_compute_seconds_count", **labels) == 5
    batches = value(page, "zoo_serving_batch_size_count", **labels)
    assert 1 <= batches <= 5
    assert value(page, ":tensorflow:serving:batching_session:wrapped_run_count") == batches
    assert value(page, "zoo_serving_batch_queue_rows", **labels) == 0
