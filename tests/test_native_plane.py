# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""The native data plane (serving/native/, docs/ARCHITECTURE.md "The native data plane"):
predictd's Predict answers equal the Python plane's on a real export, its error statuses and
messages are the Python plane's, kill -9 of predictd is survived (restarted, the port answers
again), and malformed protobufs do not bring it down. Real servers on 127.0.0.1, one per plane.
Skipped, saying why, where predictd is not built (make native)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import signal
import subprocess
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.native import plane
from serving.runtime import tensors
from tests.serving_fixtures import (  # noqa: F401
    ServerProcess,
    digits,
    exported,
    predict_request,
    wait_for,
    write_config,
    write_gated_model,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not plane.built(), reason=f"{plane.BINARY} is not built: make native (needs g++, "
    "libgrpc++-dev, protobuf-compiler-grpc, libprotobuf-dev)")]

PREDICT = "/tensorflow.serving.PredictionService/Predict"
MAX_BYTES = 8 << 20  # so the element limit is 2,097,152


@pytest.fixture(scope="module")
def servers(exported, tmp_path_factory):
    """{plane: ServerProcess} serving the same exports, softmax_regression with label stable."""
    tmp = tmp_path_factory.mktemp("planes")
    config = write_config(tmp / "models.config", {
        "softmax_regression": {"base": exported / "softmax_regression", "labels": {"stable": 1}},
        "deep_cnn": {"base": exported / "deep_cnn"}})
    started = {}
    try:
        for name in ("python", "native"):
            started[name] = ServerProcess(
                "--model_config_file", str(config), "--max_request_bytes", str(MAX_BYTES),
                "--data_plane", name, rest=False, log=tmp / f"{name}.log")
        yield started
    finally:
        for s in started.values():
            assert s.stop() == 0, s.logs()


def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.address))


def predictd_pid(server) -> int | None:
    return plane.predictd_of(server.proc.pid)


def answer(server, request):
    """(code, details, outputs) of a Predict."""
    try:
        r = stub(server).Predict(request, timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details(), None
    return grpc.StatusCode.OK, "", {k: tensors.to_ndarray(v) for k, v in r.outputs.items()}


def raw_predict(server, data: bytes):
    channel = grpc.insecure_channel(server.address)
    call = channel.unary_unary(PREDICT)  # bytes as they are, no (de)serializer
    try:
        call(data, timeout=30)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()
    finally:
        channel.close()


def test_the_native_server_says_which_plane_answers(servers):
    log = servers["native"].logs()
    assert "native data plane (predictd) answers Predict" in log
    assert "data plane native" in log and predictd_pid(servers["native"])
    assert predictd_pid(servers["python"]) is None


@pytest.mark.parametrize("model", ["softmax_regression", "deep_cnn"])
def test_native_predict_equals_the_python_planes(servers, digits, model):
    x = digits[0][:16]
    request = predict_request(model, x)
    typed = predict_request(model)  # the same values as float_val instead of tensor_content
    t = typed.inputs["images"]
    t.dtype, t.float_val[:] = request.inputs["images"].dtype, x.ravel().tolist()
    t.tensor_shape.CopyFrom(request.inputs["images"].tensor_shape)
    expected = answer(servers["python"], request)
    assert expected[0] == grpc.StatusCode.OK, expected
    for r in (request, typed):
        got = answer(servers["native"], r)
        assert got[0] == grpc.StatusCode.OK, got
        assert got[2].keys() == expected[2].keys()
        for k in got[2]:
            assert got[2][k].dtype == expected[2][k].dtype
            np.testing.assert_array_equal(got[2][k], expected[2][k])


def _requests(digits):
    one = digits[0][:1]
    cases = {
        "unknown model": predict_request("no_such_model", one),
        "unknown version": predict_request(x=one, version=99),
        "unknown label": predict_request(x=one, version_label="no_such_label"),
        "no model name": predict_request("", one),
        "unknown signature": predict_request(x=one, signature_name="no_such_signature"),
        "missing input": predict_request(),
        "wrong dtype": predict_request(x=one.astype(np.float64)),
        "wrong shape": predict_request(x=np.zeros((1, 28, 27), np.float32)),
        "wrong rank": predict_request(x=np.zeros((28, 28), np.float32)),
        "batch by label": predict_request(x=digits[0][:2], version_label="stable"),
        "empty batch": predict_request(x=np.zeros((0, 28, 28), np.float32)),
    }
    r = predict_request(x=np.zeros((2, 28, 28), np.float32))
    r.inputs["images"].tensor_content = r.inputs["images"].tensor_content[:-4]
    cases["short tensor_content"] = r
    r = predict_request(x=one)
    tensors.to_proto(one, r.inputs["pixels"])
    cases["extra input"] = r
    r = predict_request(x=one)
    r.output_filter.append("logits")
    cases["unknown output"] = r
    r = predict_request(x=one)
    r.output_filter.extend(["classes", "classes"])
    cases["duplicate output"] = r
    r = predict_request(x=one)
    r.inputs["images"].tensor_shape.dim[0].size = -1
    cases["negative dimension"] = r
    fill = predict_request(x=one)
    t = fill.inputs["images"]
    t.ClearField("tensor_content")
    t.float_val.append(1.0)
    cases["fill"] = fill
    r = predict_request()
    r.CopyFrom(fill)
    r.inputs["images"].tensor_shape.dim[0].size = 10_000  # 7.8M elements from 4 bytes
    cases["fill over the element limit"] = r
    r = predict_request()
    r.CopyFrom(fill)
    r.inputs["images"].float_val.append(2.0)
    cases["two values for 784"] = r
    r = predict_request(x=one)
    r.inputs["images"].tensor_shape.unknown_rank = True
    cases["unknown rank"] = r
    return cases


def test_error_statuses_and_messages_are_the_python_planes(servers, digits):
    for what, request in _requests(digits).items():
        expected = answer(servers["python"], request)
        got = answer(servers["native"], request)
        assert got[:2] == expected[:2], what
        if expected[2] is not None:
            for k in expected[2]:
                np.testing.assert_array_equal(got[2][k], expected[2][k])


def test_malformed_protobufs_are_invalid_argument_and_predictd_stays_up(servers, digits):
    native, python = servers["native"], servers["python"]
    pid = predictd_pid(native)
    valid = predict_request(x=digits[0][:2]).SerializeToString()
    rng = random.Random(0)
    cases = [b"\xff" * 40, b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", valid[:-3],
             valid[:7], b"\x12\x05\x0a\x03abc" * 3 + b"\x12"]
    for _ in range(150):  # bit flips and truncations of a real request
        b = bytearray(valid[:rng.randrange(1, len(valid))] if rng.random() < 0.3 else valid)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(bytes(b))
    for data in cases:
        got, expected = raw_predict(native, data), raw_predict(python, data)
        if expected[0] == grpc.StatusCode.INVALID_ARGUMENT and "Malformed" in expected[1]:
            assert got == expected
        assert got[0] != grpc.StatusCode.UNKNOWN, got
    assert predictd_pid(native) == pid
    assert answer(native, predict_request(x=digits[0][:1]))[0] == grpc.StatusCode.OK


DECODE_CHECK = plane.BINARY.parent / "sanitized" / "decode_check"


@pytest.mark.skipif(not DECODE_CHECK.is_file(), reason=f"{DECODE_CHECK} is not built (make "
                    "native-check, or make test where the toolchain is installed)")
def test_request_decoding_is_clean_under_asan_and_ubsan_over_malformed_requests():
    import subprocess

    done = subprocess.run([str(DECODE_CHECK), "20000", "1"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr
    assert done.stdout.startswith("decode_check: 20000 requests"), done.stdout


def test_kill_9_of_predictd_is_survived(servers, digits):
    native = servers["native"]
    pid = predictd_pid(native)
    os.kill(pid, signal.SIGKILL)
    new = wait_for(lambda: (p := predictd_pid(native)) not in (None, pid) and p, 30,
                   what="a new predictd")
    request = predict_request(x=digits[0][:4])
    expected = answer(servers["python"], request)
    got = wait_for(lambda: (a := answer(native, request))[0] == grpc.StatusCode.OK and a, 30,
                   what="Predict answered again")
    np.testing.assert_array_equal(got[2]["probabilities"], expected[2]["probabilities"])
    assert predictd_pid(native) == new and native.proc.poll() is None
    assert "predictd exited" in native.logs()


def test_native_is_refused_where_it_cannot_serve_and_auto_says_why(exported, tmp_path):
    import sys

    from tests.serving_fixtures import ENV, ROOT

    log = str(tmp_path / "access.log")
    args = [sys.executable, "-m", "serving.server", "--model_base_path",
            str(exported / "softmax_regression"), "--port", "0", "--access_log", log]
    refused = subprocess.run([*args, "--data_plane", "native"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "--data_plane native: the native plane does not do --access_log yet" in \
        refused.stderr
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--access_log", log, "--data_plane", "auto", rest=False,
                           log=tmp_path / "auto.log")
    assert "data plane: python (the native plane does not do --access_log yet)" in \
        server.logs()
    assert server.stop() == 0


# ---------------------------------------------------------------- batching (src/batcher.h)
BATCHING = ("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n"
            "max_enqueued_batches { value: 2 }\nnum_batch_threads { value: 1 }\n"
            "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")


@pytest.fixture(scope="module")
def batching(exported, tmp_path_factory):
    """A native server with --enable_batching (BATCHING: batches of at most 8 rows padded to 4
    or 8, at most 2 waiting, one batch thread): deep_cnn, and a gated model whose calls wait
    until the test creates the file `gate` (tests/serving_fixtures.py). Yields (server, gate,
    arrived)."""
    tmp = tmp_path_factory.mktemp("batching")
    gate, arrived = tmp / "gate", tmp / "arrived"
    write_gated_model(tmp / "gated", gate, arrived)
    config = write_config(tmp / "models.config", {"deep_cnn": {"base": exported / "deep_cnn"},
                                                  "gated": {"base": tmp / "gated"}})
    params = tmp / "batching.config"
    params.write_text(BATCHING)
    server = ServerProcess("--model_config_file", str(config), "--enable_batching",
                           "--batching_parameters_file", str(params), "--data_plane", "native",
                           log=tmp / "server.log")
    try:
        yield server, gate, arrived
    finally:
        gate.touch()  # nothing stays held in the model
        assert server.stop() == 0, server.logs()


def python_queue_full(rows: int) -> str:
    """The Python plane's refusal of a `rows`-row request by an idle queue of BATCHING (its
    Batcher itself, serving/core/batching.py): the message both planes must give."""
    import asyncio

    from google.protobuf import text_format

    from serving.core.batching import Batcher, BatchingOptions, QueueFull
    from serving.repository import protos

    options = BatchingOptions.from_proto(text_format.Parse(BATCHING, protos.BatchingParameters()))

    async def refused() -> str:
        b = Batcher(lambda inputs: inputs, options, None)
        try:
            await b.submit({"images": np.zeros((rows, 1), np.float32)})
        except QueueFull as e:
            return str(e)
        finally:
            await b.close()
        raise AssertionError(f"the Python plane queued {rows} rows")
    return asyncio.run(refused())


def batch_sizes(server, model: str) -> tuple[float, float]:
    """(rows, batches) the server ran for `model` (zoo_serving_batch_size's sum and count)."""
    with urllib.request.urlopen(f"http://{server.rest}/monitoring/prometheus/metrics",
                                timeout=30) as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"zoo_serving_batch_size_{part}{{") and f'model="{model}"' in line:
                found[part] = float(line.rsplit(" ", 1)[1])
    return found.get("sum", 0.0), found.get("count", 0.0)


def test_batched_answers_equal_the_python_planes_and_oversize_requests_split(
        batching, servers, digits):
    """Each caller gets its own rows, padding stripped, at the tolerance of the Python plane's
    batching test: requests of 1-12 rows (12: split into 8 + 4) one at a time and 8 at once,
    with and without an output filter; 17 rows would make 3 batches wait: refused as the
    Python plane refuses it."""
    server = batching[0]
    x = digits[0]
    slices = [(0, 1), (1, 4), (4, 12), (12, 24)] + [(24 + i, 25 + i + i % 3) for i in range(8)]

    def request(a, b, only=None):
        r = predict_request("deep_cnn", x[a:b])
        if only:
            r.output_filter.append(only)
        return r

    before = batch_sizes(server, "deep_cnn")
    got = [answer(server, request(a, b)) for a, b in slices[:4]]
    with cf.ThreadPoolExecutor(8) as pool:
        got += list(pool.map(lambda s: answer(server, request(*s)), slices[4:]))
    for (a, b), g in zip(slices, got):
        expected = answer(servers["python"], request(a, b))
        assert g[0] == grpc.StatusCode.OK, g
        assert g[2].keys() == expected[2].keys()
        for k in g[2]:
            assert g[2][k].dtype == expected[2][k].dtype and g[2][k].shape[0] == b - a
            np.testing.assert_allclose(g[2][k], expected[2][k], atol=1e-5)
    only = answer(server, request(0, 3, "classes"))
    assert only[0] == grpc.StatusCode.OK and list(only[2]) == ["classes"]
    rows, batches = batch_sizes(server, "deep_cnn")
    rows, batches = rows - before[0], batches - before[1]
    assert rows % 4 == 0 and rows >= 28 + 16 + 4  # padded to allowed sizes
    assert batches >= 5  # the 12-row request alone ran as two batches
    refused = answer(server, request(0, 17))
    assert refused[:2] == (grpc.StatusCode.UNAVAILABLE, python_queue_full(17))


def test_batches_form_while_the_batch_thread_is_busy_and_a_full_queue_is_refused(batching):
    """One 1-row request held in the gated model by the one batch thread; 20 more arrive: 16
    fill the queue (2 batches of 8), 4 are refused UNAVAILABLE at once with the Python plane's
    words; once the gate opens, the 16 run as two batches of 8 (the first padded to 4)."""
    server, gate, arrived = batching
    x = np.ones((1, 4), np.float32)

    def call(_):
        r = predict_request("gated")
        tensors.to_proto(x, r.inputs["x"])
        got = answer(server, r)
        if got[0] == grpc.StatusCode.OK:
            return "OK" if np.array_equal(got[2]["y"], x) else "WRONG"
        return got[:2]

    before = batch_sizes(server, "gated")
    with cf.ThreadPoolExecutor(21) as pool:
        held = pool.submit(call, 0)
        wait_for(lambda: len(list(arrived.iterdir())) == 1, 60, what="a request in the model")
        futures = [pool.submit(call, i) for i in range(20)]
        wait_for(lambda: sum(f.done() for f in futures) >= 4, 60,
                 what="four requests refused while one is in the model")
        early = [f.result() for f in futures if f.done()]
        gate.touch()
        codes = [f.result() for f in futures]
        assert held.result() == "OK"
    full = (grpc.StatusCode.UNAVAILABLE, python_queue_full(17))
    assert early == [full] * 4, early
    assert codes.count("OK") == 16 and codes.count(full) == 4, codes
    rows, batches = batch_sizes(server, "gated")
    assert (rows - before[0], batches - before[1]) == (4 + 8 + 8, 3)
    assert len(list(arrived.iterdir())) == 3  # three model runs for 17 requests


BATCHER_CHECK = plane.BINARY.parent / "tsan" / "batcher_check"


@pytest.mark.skipif(not BATCHER_CHECK.is_file(), reason=f"{BATCHER_CHECK} is not built (make "
                    "native-check, or make test where the toolchain is installed)")
def test_the_batcher_is_clean_under_thread_sanitizer_with_concurrent_callers():
    done = subprocess.run([str(BATCHER_CHECK), "1000", "8"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ThreadSanitizer" not in done.stderr
    assert done.stdout.startswith("batcher_check: ") and " 0 wrong," in done.stdout, done.stdout
