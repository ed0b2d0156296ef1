# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""The native data plane (serving/native/, docs/ARCHITECTURE.md "The native data plane"):
predictd's Predict and Open Inference ModelInfer answers equal the Python plane's on a real
export (ModelInfer byte for byte), its error statuses and messages are the Python plane's, it
answers them itself (with the Python plane stopped), kill -9 of predictd is survived
(restarted, the port answers again), and malformed protobufs do not bring it down. Real servers
on 127.0.0.1, one per plane. Skipped, saying why, where predictd is not built (make native)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2

from serving.native import plane
from serving.runtime import tensors
from tests.serving_fixtures import (  # noqa: F401
    ENV,
    ROOT,
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
V2 = "/inference.GRPCInferenceService/"
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
                "--data_plane", name, log=tmp / f"{name}.log")
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


def raw_call(server, data: bytes, method: str = PREDICT, timeout: float = 30):
    """(code, details, answer bytes) of a call with `data` as it is (no (de)serializer)."""
    channel = grpc.insecure_channel(server.address)
    call = channel.unary_unary(method)
    try:
        return grpc.StatusCode.OK, "", call(data, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details(), None
    finally:
        channel.close()


def behind(native):
    """The native server's own Python plane, on the loopback port predictd forwards to: the
    one whose answers predictd's must equal byte for byte (a signature's outputs come in the
    order of the SavedModel's protobuf map, which is not the same in every process)."""
    import re
    import types

    port = re.search(r"the Python plane the rest \(on (127\.0\.0\.1:\d+)\)", native.logs())
    return types.SimpleNamespace(address=port.group(1))


def raw_predict(server, data: bytes):
    return raw_call(server, data)[:2]


def test_the_native_server_says_which_plane_answers(servers):
    log = servers["native"].logs()
    assert "native data plane (predictd) answers Predict" in log
    assert "data plane native" in log and predictd_pid(servers["native"])
    assert predictd_pid(servers["python"]) is None


def listed_planes(server) -> dict[str, dict]:
    """model -> the data_planes of the REST listing (/v1/models, the web page's source)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{server.rest}/v1/models", timeout=30) as r:
        return {m["name"]: m["data_planes"] for m in json.loads(r.read())["models"]}


def test_status_listing_and_start_up_line_name_each_versions_plane(servers):
    from serving.clients.tf_serving import ZooClient

    for name, named, why in (("native", "native", ""),
                             ("python", "python", "--data_plane python")):
        with ZooClient(servers[name].address) as client:
            for model in ("softmax_regression", "deep_cnn"):
                assert client.data_planes(model) == {1: named + (f": {why}" if why else "")}
            assert client.data_planes("softmax_regression", label="stable") == \
                client.data_planes("softmax_regression")
        one = {"1": {"plane": named, "reason": why}}
        assert listed_planes(servers[name]) == {"softmax_regression": one, "deep_cnn": one}
    assert "models: deep_cnn v1 native, softmax_regression v1 native; " in \
        servers["native"].logs()
    assert "models: deep_cnn v1, softmax_regression v1; backend savedmodel; data plane python " \
        "(--data_plane python); " in servers["python"].logs()
    done = subprocess.run([sys.executable, "-m", "serving.client", "--address",
                           servers["native"].address, "status", "deep_cnn"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout == "deep_cnn v1: AVAILABLE; data plane native\n", done.stderr


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

    log, payloads = str(tmp_path / "access.log"), str(tmp_path / "payloads.log")
    args = [sys.executable, "-m", "serving.server", "--model_base_path",
            str(exported / "softmax_regression"), "--port", "0", "--access_log", log,
            "--payload_log_sample_rate", "1", "--payload_log_file", payloads]
    refused = subprocess.run([*args, "--data_plane", "native"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "--data_plane native: the native plane does not do --payload_log_sample_rate yet" in \
        refused.stderr
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--access_log", log, "--payload_log_sample_rate", "1",
                           "--payload_log_file", payloads,
                           "--data_plane", "auto", rest=False, log=tmp_path / "auto.log")
    assert "data plane: python (the native plane does not do --payload_log_sample_rate yet)" \
        in server.logs()
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

# ---------------------------------------------------------------- the Open Inference Protocol
def infer(model="softmax_regression", x=None, shape=None, datatype="FP32", raw=None,
          outputs=(), version="", contents=False, **fields):
    """A ModelInferRequest with `x` (or zeros of `shape`) as its "images" input, raw unless
    `contents`; `raw` replaces its raw bytes."""
    shape = shape or (x.shape if x is not None else (1, 28, 28))
    if x is None and raw is None:
        x = np.zeros(shape, np.float32)
    r = service_pb2.ModelInferRequest(model_name=model, model_version=version, **fields)
    t = r.inputs.add(name="images", datatype=datatype, shape=shape)
    if contents:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        r.raw_input_contents.append(x.tobytes() if raw is None else raw)
    for o in outputs:
        r.outputs.add(name=o)
    return r


def _infer_requests(digits):
    """What the native plane answers itself: name -> request."""
    x = digits[0]
    cases = {
        "1 row raw": infer(x=x[:1]),
        "16 rows raw": infer(x=x[:16], id="sixteen"),
        "16 rows contents": infer(x=x[:16], contents=True),
        "deep_cnn 9 rows, version 1": infer("deep_cnn", x=x[:9], version="1"),
        "version 01": infer(x=x[:2], version="01"),
        "one output": infer(x=x[:3], outputs=["classes"]),
        "both outputs, reversed": infer(x=x[:3], outputs=["probabilities", "classes"]),
        "empty batch": infer(shape=(0, 28, 28)),
        "wrong datatype": infer(datatype="FP64", raw=np.zeros((1, 28, 28)).tobytes()),
        "unknown datatype": infer(datatype="FP8"),
        "unknown datatype with quotes": infer(datatype="F'P\"8\\"),
        "wrong shape": infer(shape=(1, 28, 27)),
        "wrong rank": infer(shape=(28, 28)),
        "negative dimension": infer(shape=(-1, 28, 28), raw=b""),
        "over the element limit": infer(shape=(1 << 20, 28, 28), raw=b""),
        "raw size": infer(raw=b"\0" * 100),
        "contents count": infer(x=x[:2], contents=True, shape=(3, 28, 28)),
        "unknown output": infer(outputs=["logits"]),
        "repeated output": infer(outputs=["classes", "classes"]),
    }
    r = infer()
    r.ClearField("inputs")
    r.ClearField("raw_input_contents")
    cases["missing input"] = r
    r = infer()
    r.inputs[0].name = "pixels"
    cases["unexpected input"] = r
    r = infer()
    r.inputs.add().CopyFrom(r.inputs[0])
    r.raw_input_contents.append(r.raw_input_contents[0])
    cases["repeated input"] = r
    r = infer()
    r.raw_input_contents.append(b"")
    cases["raw entries"] = r
    r = infer()
    r.inputs[0].contents.fp32_contents.append(1.0)
    cases["contents and raw"] = r
    r = infer(outputs=["classes"])
    r.outputs[0].parameters["classification"].int64_param = 2
    cases["classification"] = r
    r = infer(x=x[:1])
    r.parameters["priority"].int64_param = 1  # parameters are not read
    r.inputs[0].parameters["shared_memory_region"].string_param = "nowhere"
    cases["parameters"] = r
    return {k: v.SerializeToString() for k, v in cases.items()}


def _forwarded_infer_requests(digits):
    """What the native plane leaves to the Python plane: name -> request bytes."""
    cases = {
        "unknown model": infer("no_such_model"),
        "unknown version": infer(version="2"),
        "not a version": infer(version="one"),
        "beyond int64": infer(version="9" * 20),
        "no model name": infer(""),
        "non-ASCII datatype": infer(datatype="FP\u00e9"),
        "dimensions beyond an exact count": infer(shape=(1 << 62, 1 << 62, 28), raw=b""),
    }
    r = infer()
    r.inputs[0].datatype = "INT8"
    r.ClearField("raw_input_contents")
    r.inputs[0].contents.int_contents.extend([300] * 784)  # numpy's OverflowError
    cases["int8 contents out of range"] = r
    return {k: v.SerializeToString() for k, v in cases.items()}


def _health_requests():
    m = service_pb2
    return {
        "ServerLive": [m.ServerLiveRequest()],
        "ServerReady": [m.ServerReadyRequest()],
        "ModelReady": [m.ModelReadyRequest(name="deep_cnn"),
                       m.ModelReadyRequest(name="deep_cnn", version="1"),
                       m.ModelReadyRequest(name="deep_cnn", version="2"),
                       m.ModelReadyRequest(name="no_such_model"),
                       m.ModelReadyRequest(name="deep_cnn", version="x")],
    }


def _malformed(valid: bytes) -> list[bytes]:
    rng = random.Random(0)
    cases = [b"\xff" * 40, b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", valid[:-3],
             valid[:7], b"\x2a\x05\x0a\x03abc" * 3 + b"\x2a"]
    for _ in range(100):  # bit flips and truncations of a real request
        b = bytearray(valid[:rng.randrange(1, len(valid))] if rng.random() < 0.3 else valid)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(bytes(b))
    return cases


def test_model_infer_answers_are_the_python_planes_byte_for_byte(servers, digits):
    native, python = servers["native"], servers["python"]
    cases = {**_infer_requests(digits), **_forwarded_infer_requests(digits)}
    for what, data in cases.items():
        got = raw_call(native, data, V2 + "ModelInfer")
        assert got == raw_call(behind(native), data, V2 + "ModelInfer"), what
        # another server: the same code (its messages and outputs may list outputs in another
        # order)
        assert got[0] == raw_call(python, data, V2 + "ModelInfer")[0], what
    ok = [k for k, d in cases.items() if raw_call(python, d, V2 + "ModelInfer")[0] ==
          grpc.StatusCode.OK]
    assert len(ok) == 9, ok  # the table holds what it means to (the rest are refusals)
    for method, requests in _health_requests().items():
        for r in requests:
            data = r.SerializeToString()
            assert raw_call(native, data, V2 + method) == raw_call(python, data, V2 + method), r


def test_model_infer_malformed_protobufs_and_predictd_stays_up(servers, digits):
    native, python = servers["native"], servers["python"]
    pid = predictd_pid(native)
    for data in _malformed(_infer_requests(digits)["16 rows raw"]):
        got = raw_call(native, data, V2 + "ModelInfer")
        expected = raw_call(python, data, V2 + "ModelInfer")
        if expected[0] == grpc.StatusCode.INVALID_ARGUMENT and "Malformed" in expected[1]:
            assert got == expected
        assert got[0] != grpc.StatusCode.UNKNOWN, got
    assert predictd_pid(native) == pid
    assert raw_call(native, _infer_requests(digits)["1 row raw"], V2 + "ModelInfer")[0] == \
        grpc.StatusCode.OK


def test_predictd_answers_model_infer_and_health_itself(servers, digits):
    """With the Python plane stopped (SIGSTOP), predictd still answers what it should: every
    answer equal to the Python server's."""
    native, python = servers["native"], servers["python"]
    cases = [(V2 + "ModelInfer", d) for d in _infer_requests(digits).values()]
    cases += [(V2 + "ModelInfer", b"\xff" * 40), (PREDICT, b"\xff" * 40),
              (PREDICT, predict_request(x=digits[0][:2]).SerializeToString())]
    cases += [(V2 + m, r.SerializeToString()) for m, rs in _health_requests().items()
              for r in rs[:2]]
    from tensorflow_serving.apis import predict_pb2

    def answer(server, method, data, **kw):  # a Predict's outputs are a map: in any order
        code, details, out = raw_call(server, data, method, **kw)
        if method == PREDICT and out is not None:
            out = predict_pb2.PredictResponse.FromString(out)
        return code, details, out

    expected = [answer(behind(native), m, d) for m, d in cases]
    assert [e[0] for e in expected] == [raw_call(python, d, m)[0] for m, d in cases]
    os.kill(native.proc.pid, signal.SIGSTOP)
    try:
        got = [answer(native, m, d, timeout=60) for m, d in cases]
    finally:
        os.kill(native.proc.pid, signal.SIGCONT)
    assert got == expected


def _statistics(server, model="softmax_regression"):
    from google.protobuf import json_format

    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(V2 + "ModelStatistics",
                                   request_serializer=service_pb2.ModelStatisticsRequest.
                                   SerializeToString,
                                   response_deserializer=service_pb2.ModelStatisticsResponse.
                                   FromString)
        (stat,) = call(service_pb2.ModelStatisticsRequest(name=model, version="1"),
                       timeout=30).model_stats
    return json_format.MessageToDict(stat, preserving_proto_field_name=True)


@pytest.mark.parametrize("plane_", ["python", "native"])
def test_model_statistics_count_both_protocols_on_both_planes(servers, digits, plane_):
    server = servers[plane_]
    x = digits[0]
    before = _statistics(server)
    for method, r in ((V2 + "ModelInfer", infer(x=x[:16])), (V2 + "ModelInfer", infer(x=x[:1])),
                      (V2 + "ModelInfer", infer(shape=(0, 28, 28))),
                      (PREDICT, predict_request(x=x[:5]))):
        assert raw_call(server, r.SerializeToString(), method)[0] == grpc.StatusCode.OK
    assert raw_call(server, infer(shape=(1, 27, 28)).SerializeToString(),
                    V2 + "ModelInfer")[0] == grpc.StatusCode.INVALID_ARGUMENT  # resolved, refused
    assert raw_call(server, infer(datatype="FP8").SerializeToString(),  # refused before it
                    V2 + "ModelInfer")[0] == grpc.StatusCode.INVALID_ARGUMENT
    after = _statistics(server)

    def count(stat, *path):
        for p in path:
            stat = stat.get(p, {})
        return int(stat or 0)

    def delta(*path):
        return count(after, *path) - count(before, *path)

    phases = ("compute_input", "queue", "compute_infer", "compute_output")
    assert delta("inference_stats", "success", "count") == 4
    assert delta("inference_stats", "fail", "count") == 1
    assert [delta("inference_stats", p, "count") for p in phases] == [4, 4, 4, 4]
    assert sum(delta("inference_stats", p, "ns") for p in phases) <= \
        delta("inference_stats", "success", "ns")
    assert delta("inference_count") == 16 + 1 + 0 + 5
    assert delta("execution_count") == 3  # the empty batch is not run
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"])
               for b in after.get("batch_stats", [])}
    assert {1, 5, 16} <= set(batches)
    assert int(after["last_inference"]) >= int(before.get("last_inference", 0))


def test_model_infer_is_batched_with_predict_and_answers_as_the_python_plane(
        batching, servers, digits):
    """ModelInfer goes through the native batcher (the queues Predict uses): 8 concurrent
    deep_cnn requests of 1-3 rows, each answer's outputs equal to the Python plane's unbatched
    ones, and the batches counted in zoo_serving_batch_size."""
    server, x = batching[0], digits[0]
    slices = [(i, i + 1 + i % 3) for i in range(0, 24, 3)]
    before = batch_sizes(server, "deep_cnn")

    def call(target, a, b):
        data = infer("deep_cnn", x[a:b]).SerializeToString()
        code, details, raw = raw_call(target, data, V2 + "ModelInfer")
        assert code == grpc.StatusCode.OK, details
        r = service_pb2.ModelInferResponse.FromString(raw)
        dtypes = {"FP32": np.float32, "INT64": np.int64}
        return {o.name: np.frombuffer(c, dtypes[o.datatype]).reshape(o.shape)
                for o, c in zip(r.outputs, r.raw_output_contents)}

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: call(server, *s), slices))
    for (a, b), g in zip(slices, got):
        expected = call(servers["python"], a, b)
        assert g.keys() == expected.keys()
        for k in g:
            assert g[k].shape[0] == b - a
            np.testing.assert_allclose(g[k], expected[k], atol=1e-5)
    rows, batches = batch_sizes(server, "deep_cnn")
    assert rows - before[0] >= sum(b - a for a, b in slices) and batches > before[1]

def test_auto_falling_back_names_the_python_plane_and_why_per_version(exported, tmp_path):
    from serving.clients.tf_serving import ZooClient

    why = "--data_plane auto: the native plane does not do --backend onnx yet"
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--backend", "onnx", "--data_plane", "auto", log=tmp_path / "a.log")
    try:
        with ZooClient(server.address) as client:
            assert client.data_planes("default") == {1: f"python: {why}"}
        assert listed_planes(server) == {"default": {"1": {"plane": "python", "reason": why}}}
        assert f"data plane python ({why}); " in server.logs()
    finally:
        assert server.stop() == 0


def test_the_access_log_has_a_line_for_every_native_request_as_the_python_planes(
        exported, digits, tmp_path):
    """The same Predicts (answered, refused by their checks, malformed, forwarded) to a native
    and a Python server with --access_log: one line each, equal but for time, latency, the
    client's port and id; a forwarded call's peer is the client's too. The servers are stopped
    first, so every line is written."""
    import json

    def call(channel, data: bytes):
        try:
            channel.unary_unary(PREDICT)(data, timeout=30)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    config = write_config(tmp_path / "models.config", {
        "softmax_regression": {"base": exported / "softmax_regression", "labels": {"stable": 1}},
        "deep_cnn": {"base": exported / "deep_cnn"}})
    cases = [("ok", predict_request(x=digits[0][:3])),
             ("ok cnn", predict_request("deep_cnn", digits[0][:2])),
             *_requests(digits).items()]
    malformed = [b"\xff" * 40, predict_request(x=digits[0][:1]).SerializeToString()[:-3]]
    lines, answered = {}, {}
    for name in ("python", "native"):
        server = ServerProcess("--model_config_file", str(config), "--max_request_bytes",
                               str(MAX_BYTES), "--data_plane", name, "--access_log",
                               str(tmp_path / f"{name}.access"), rest=False,
                               log=tmp_path / f"{name}.log")
        channel = grpc.insecure_channel(server.address)  # one connection: one peer
        try:
            answered[name] = [call(channel, r.SerializeToString()) for _, r in cases] + [
                call(channel, data) for data in malformed]
        finally:
            channel.close()
            assert server.stop() == 0, server.logs()
        lines[name] = [json.loads(line) for line in
                       (tmp_path / f"{name}.access").read_text().splitlines()]
    assert answered["native"] == answered["python"]
    n = len(cases) + len(malformed)
    predicts = {name: [line for line in got if line["method"] == PREDICT]
                for name, got in lines.items()}
    assert len(predicts["native"]) == len(predicts["python"]) == n
    # A line is written when its call ends, predictd's when they are pulled (every 0.2 s):
    # the file is not in the order of the calls, so the lines are compared as a multiset.
    assert sorted(line["status"] for line in predicts["native"]) == \
        sorted(code.name for code, _ in answered["native"])
    for line in predicts["native"]:
        assert line["peer"].startswith("ipv4:127.0.0.1:") and line["latency_ms"] > 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert list(line) == list(predicts["python"][0])  # the same keys in the same order
    assert len({line["id"] for line in lines["native"]}) == len(lines["native"])
    for name in lines:  # answered by predictd or forwarded to the Python plane: the caller
        assert len({line["peer"] for line in predicts[name]}) == 1, predicts[name]

    def same(line):
        return json.dumps({k: v for k, v in line.items()
                           if k not in ("time", "latency_ms", "peer", "id")}, sort_keys=True)

    assert sorted(map(same, predicts["native"])) == sorted(map(same, predicts["python"]))
    assert {"protocol": "tfs-grpc", "method": PREDICT, "model": "softmax_regression",
            "version": 1, "rows": 3, "status": "OK"} in [
        json.loads(same(line)) for line in predicts["native"]]


def test_tokens_reach_a_restarted_predictd_and_new_tokens_replace_them(exported, digits,
                                                                         tmp_path):
    """--auth_token_file on the native plane: the tokens go over the control channel (not in
    predictd's argv), again after a kill -9 (a restarted predictd must not answer without
    them), and set_guard (a token-file reload) replaces them. An in-process server, so that
    the test can hand it new tokens; a Predict with the new token can only be answered by
    predictd (the Python plane still holds the old one)."""
    import asyncio

    from serving.server import Server, options
    from serving.transports import auth

    (tmp_path / "token").write_text("first-token\n")
    request = predict_request("default", digits[0][:2]).SerializeToString()

    async def main():
        server = Server(options("--model_base_path", str(exported / "softmax_regression"),
                                "--port", "0", "--data_plane", "native", "--auth_token_file",
                                str(tmp_path / "token")))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                async def code(token=None):
                    metadata = (("authorization", f"Bearer {token}"),) if token else ()
                    try:
                        await channel.unary_unary(PREDICT)(request, timeout=30,
                                                           metadata=metadata)
                        return grpc.StatusCode.OK
                    except grpc.RpcError as e:
                        return e.code()

                first = plane.predictd_of(os.getpid())
                assert "first-token" not in Path(f"/proc/{first}/cmdline").read_text()
                assert [await code(t) for t in ("first-token", None, "wrong")] == [
                    grpc.StatusCode.OK, *[grpc.StatusCode.UNAUTHENTICATED] * 2]
                os.kill(first, signal.SIGKILL)
                for _ in range(300):
                    now = plane.predictd_of(os.getpid())
                    if now not in (None, first) and server.native.serves("default", 1) and \
                            await code("first-token") == grpc.StatusCode.OK:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("predictd was not restarted, answering")
                assert [await code(t) for t in (None, "wrong")] == [
                    grpc.StatusCode.UNAUTHENTICATED] * 2
                await server.native.set_guard(auth.Guard("second-token"))
                assert [await code(t) for t in ("second-token", "first-token")] == [
                    grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED]
        finally:
            await server.stop(0)

    asyncio.run(main())
