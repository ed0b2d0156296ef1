# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""The native data plane (serving/native/, docs/ARCHITECTURE.md "The native data plane"):
predictd's Predict answers equal the Python plane's on a real export, its error statuses and
messages are the Python plane's, kill -9 of predictd is survived (restarted, the port answers
again), and malformed protobufs do not bring it down. Real servers on 127.0.0.1, one per plane.
Skipped, saying why, where predictd is not built (make native)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

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
    import subprocess
    import sys

    from tests.serving_fixtures import ENV, ROOT

    args = [sys.executable, "-m", "serving.server", "--model_base_path",
            str(exported / "softmax_regression"), "--port", "0", "--enable_batching"]
    refused = subprocess.run([*args, "--data_plane", "native"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "--data_plane native: the native plane does not do --enable_batching yet" in \
        refused.stderr
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--enable_batching", "--data_plane", "auto", rest=False,
                           log=tmp_path / "auto.log")
    assert "data plane: python (the native plane does not do --enable_batching yet)" in \
        server.logs()
    assert server.stop() == 0


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
