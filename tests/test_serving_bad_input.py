"""Bad input over REST and gRPC (issue 25): each answered 4xx / INVALID_ARGUMENT naming what is
wrong, never a 500 or UNKNOWN, and each request has its access-log line. The whole server in
this process (tests/test_serving_rest.py's Stack, tiny ONNX identity models)."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import grpc
import pytest

from tests import test_serving_rest as rest
from tests.test_serving_rest import ROW, exchange, post

models, serve = rest.models, rest.serve  # the fixtures

PREDICT = "/v1/models/identity:predict"
INFER = "/v2/models/identity/infer"


def v2_body(data) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "data": data}]}).encode()


@pytest.mark.parametrize("path,body", [
    (PREDICT, b'{"instances": [[1.0, null, 3.0, 4.0]]}'),
    (PREDICT, b'{"instances": [[1.0, true, 3.0, 4.0]]}'),
    (PREDICT, b'{"inputs": {"x": [[false, 2, 3, 4]]}}'),
    (INFER, v2_body([1.0, None, 3.0, 4.0])),
    (INFER, v2_body([[1.0, 2.0, 3.0, True]])),
], ids=["tfs-null", "tfs-true", "tfs-columnar-false", "v2-null", "v2-true"])
def test_json_null_and_booleans_in_a_float_tensor_are_400(serve, path, body):
    status, _, answer = exchange(serve().port, post(path, body))
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert '"x"' in error and ("null" in error or "boolean" in error), error


def test_json_booleans_fill_a_bool_tensor_and_numbers_stay_fine(serve):
    status, _, answer = exchange(serve().port, post(PREDICT, ROW))
    assert status == 200, answer


@pytest.mark.parametrize("request_bytes", [
    post("/v1/models/identity/versions/" + "7" * 5000 + ":predict", ROW),
    post("/v2/models/identity/versions/" + "7" * 5000 + "/infer", v2_body([1, 2, 3, 4])),
    post(INFER, v2_body([1, 2, 3, 4]), "Inference-Header-Content-Length: " + "1" * 5000),
    post(INFER, b'{"inputs": [{"name": "x", "shape": [' + b"9" * 5000
         + b', 4], "datatype": "FP32", "data": [1]}]}'),
], ids=["tfs-version", "v2-version", "header-length", "v2-shape"])
def test_numbers_of_any_length_are_400(serve, request_bytes):
    status, _, answer = exchange(serve().port, request_bytes)
    assert status in (400, 404), answer
    assert "Traceback" not in answer.decode() and json.loads(answer)["error"]


def read_access_log(path, n: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} holds fewer than {n} lines: {path.read_text()!r}")


@pytest.mark.parametrize("method", ["/tensorflow.serving.PredictionService/Predict",
                                    "/inference.GRPCInferenceService/ModelInfer",
                                    "/tensorflow.serving.ModelService/GetModelStatus"])
@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x0a\x80", b"\x0a\x05ab"],
                         ids=["raw", "bad-varint", "truncated"])
def test_malformed_protobufs_are_invalid_argument_and_logged(serve, tmp_path, method, garbage):
    log = tmp_path / "access.jsonl"
    stack = serve(access_log=log, access_log_flush_seconds=0)
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        call = channel.unary_unary(method)  # bytes as they are
        with pytest.raises(grpc.RpcError) as e:
            call(garbage, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "class" not in e.value.details() and "malformed" in e.value.details().lower()
    [line] = read_access_log(log, 1)
    assert (line["method"], line["status"]) == (method, "INVALID_ARGUMENT")


def length_delimited(number: int, payload: bytes) -> bytes:
    assert number < 16 and len(payload) < 128  # one-byte key and length
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize("int_val", [b"\x01\xff\xff", b"\x01" + b"\xff" * 11 + b"\x01"],
                         ids=["ends-inside-a-varint", "11-byte-varint"])
def test_a_predict_whose_int_val_holds_a_bad_varint_is_invalid_argument(serve, int_val):
    # deep inside: PredictRequest.inputs["x"] (a map entry) -> TensorProto.int_val (packed)
    tensor = b"\x08\x03" + length_delimited(2, b"\x12\x02\x08\x02") + length_delimited(7, int_val)
    request = (length_delimited(1, length_delimited(1, b"identity"))
               + length_delimited(2, length_delimited(1, b"x") + length_delimited(2, tensor)))
    stack = serve()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "Malformed request" in e.value.details() and "Predict" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # the server is still up and answering
            call(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_5000_digit_v2_version_over_grpc_is_invalid_argument(serve):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stack = serve()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
                (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="identity",
                                                                      version="7" * 5000)),
                (stub.ModelInfer, service_pb2.ModelInferRequest(model_name="identity",
                                                                model_version="7" * 5000))):
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


@pytest.mark.parametrize("encoding,body,status", [
    ("gzip", gzip.compress(ROW), 200),
    ("deflate", zlib.compress(ROW), 200),
    ("gzip", b"not gzip at all", 400),
    ("deflate", b"not deflate", 400),
    ("br", b"not brotli", 400),
    ("gzip", gzip.compress(ROW)[:-6], 400),
    ("br", __import__("brotli").compress(ROW), 200),
    ("gzip", gzip.compress(b'{"instances": [' + b"[1, 2, 3, 4], " * 400_000 + b"[1, 2, 3, 4]]}"),
     413),
    ("zstd", ROW, 415),
    ("gzip, gzip", gzip.compress(gzip.compress(ROW)), 415),
])
def test_content_encoding(serve, tmp_path, encoding, body, status):
    log = tmp_path / "access.jsonl"  # 1 MiB: the limit counts decompressed bytes
    stack = serve(access_log=log, access_log_flush_seconds=0, max_request_bytes=1 << 20)
    got, _, answer = exchange(stack.port, post(PREDICT, body, f"Content-Encoding: {encoding}"))
    assert got == status, answer
    if status != 200:
        assert ("--max_request_bytes" if status == 413 else "Content-Encoding") in \
            json.loads(answer)["error"]
    [line] = read_access_log(log, 1)
    assert line["status"] == status


def test_a_request_aiohttp_cannot_parse_has_its_access_log_line(serve, tmp_path):
    log = tmp_path / "access.jsonl"
    stack = serve(access_log=log, access_log_flush_seconds=0)
    got, _, _ = exchange(stack.port, b"GET /v1/models/identity HTTP/1.1\r\nHost: t\r\n"
                                     b"Content-Length: 1_0\r\n\r\n")
    assert got == 400
    [line] = read_access_log(log, 1)
    assert line["status"] == 400


# ------------------------------------------------------------------------------ duplicates
@pytest.mark.parametrize("path,body", [
    (PREDICT, b'{"instances": [[1, 2, 3, 4]], "instances": [[5, 6, 7, 8]]}'),
    (PREDICT, b'{"inputs": {"x": [[1, 2, 3, 4]], "x": [[5, 6, 7, 8]]}}'),
    (INFER, b'{"inputs": [{"name": "x", "name": "y", "shape": [1, 4], "datatype": "FP32", '
            b'"data": [1, 2, 3, 4]}]}'),
    (PREDICT, json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]] * 20_000}).encode()[:-1]
     + b', "instances": [[0, 0, 0, 0]]}'),
], ids=["tfs-top", "tfs-inputs", "v2-tensor", "big-body"])
def test_duplicate_json_keys_are_400(serve, path, body):
    status, _, answer = exchange(serve().port, post(path, body))
    assert status == 400, answer
    assert "duplicate key" in json.loads(answer)["error"]


def test_two_inference_header_lengths_are_400(serve):
    body = v2_body([1, 2, 3, 4])
    status, _, answer = exchange(serve().port, post(
        INFER, body, f"Inference-Header-Content-Length: {len(body)}",
        f"Inference-Header-Content-Length: {len(body)}"))
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(answer)["error"]


@pytest.mark.parametrize("first_good", [True, False], ids=["valid-then-wrong", "wrong-then-valid"])
def test_two_authorization_values_are_refused_on_rest_and_grpc(serve, tmp_path, first_good):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    token = tmp_path / "token"
    token.write_text("s3cret")
    stack = serve(auth_token_file=token)
    values = ["Bearer s3cret", "Bearer wrong"][::1 if first_good else -1]
    status, _, answer = exchange(stack.port, (
        f"GET /v1/models/identity HTTP/1.1\r\nHost: t\r\nAuthorization: {values[0]}\r\n"
        f"Authorization: {values[1]}\r\n\r\n").encode())
    assert status == 401 and "more than one Authorization" in json.loads(answer)["error"]
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "identity"
        stub.GetModelStatus(request, timeout=10, metadata=[("authorization", "Bearer s3cret")])
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelStatus(request, timeout=10,
                                metadata=[("authorization", v) for v in values])
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "more than one Authorization" in e.value.details()


# ------------------------------------------------------------------------------ config
def reload(stack, config_text: str):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(text_format.Parse(config_text,
                                              model_server_config_pb2.ModelServerConfig()))
    """(gRPC code, message) of HandleReloadConfigRequest."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        try:
            answer = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=30)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, answer.status.error_message


def config_text(name: str, base, labels: dict[str, int]) -> str:
    labelled = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
    return (f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" '
            f'model_platform: "tensorflow" {labelled} }} }}')


def test_labels_must_name_available_versions_unless_allowed(serve, models, tmp_path):
    from serving.repository import protos

    path = tmp_path / "models.config"
    path.write_text(config_text("identity", models / "identity", {"next": 2}))
    with pytest.raises(protos.ConfigError, match=r"label 'next' names version 2.*available"):
        serve(model_config_file=path)
    allowed = serve(model_config_file=path, allow_version_labels_for_unavailable_models="true")
    assert allowed.core.labels("identity") == {"next": 2}
    path.write_text(config_text("identity", models / "identity", {"stable": 1}))
    stack = serve(model_config_file=path)
    code, message = reload(stack, config_text("identity", models / "identity",
                                              {"stable": 1, "x": 9}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'x' names version 9" in message
    assert stack.core.labels("identity") == {"stable": 1}  # unchanged
    code, _ = reload(stack, config_text("identity", models / "identity", {"good": 1}))
    assert code == grpc.StatusCode.OK and stack.core.labels("identity") == {"good": 1}


def test_model_names_rest_cannot_address_are_refused(serve, models, tmp_path):
    from serving.repository import protos

    path = tmp_path / "models.config"
    path.write_text(config_text("a/b", models / "identity", {}))
    with pytest.raises(protos.ConfigError, match=r"'a/b' cannot be addressed over REST"):
        serve(model_config_file=path)
    path.write_text(config_text("identity", models / "identity", {}))
    stack = serve(model_config_file=path)
    for name in ("a/b", "m:predict"):
        code, message = reload(stack, config_text(name, models / "identity", {}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "addressed over REST" in message
    assert stack.core.model_names() == ["identity"]


# ------------------------------------------------------------------------------ limits
def test_the_default_element_limit_counts_a_fill_and_is_what_64_mib_carries(serve):
    """One float_val fills a whole tensor: [4,200,000, 4] from a few bytes is 16.8M float32,
    more than a 64 MiB message can carry explicitly (16,777,216), so it is refused."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stack = serve()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "identity"
    x = request.inputs["x"]
    x.dtype = 1  # DT_FLOAT
    x.tensor_shape.dim.add(size=4_200_000)
    x.tensor_shape.dim.add(size=4)
    x.float_val.append(1.0)
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                               timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "16777216" in e.value.details().replace(",", ""), e.value.details()


# ------------------------------------------------------------------------------ HTTP framing
def read_all(port: int, request: bytes) -> bytes:
    """Everything the server sends back on one connection until it closes it."""
    from contextlib import closing

    with closing(rest.connect(port)) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
def test_a_request_line_of_another_http_version_is_505_in_http_1_1(serve, version):
    answer = read_all(serve().port, f"GET /v2/health/live {version}\r\nHost: t\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 505 "), answer
    assert version.encode() in answer


def test_pipelined_requests_before_garbage_are_each_answered(serve):
    """A request the handler refuses, then bytes that are no request, in one write: both 400s
    come back, in order (aiohttp kept only the parser's error of such a read)."""
    answer = read_all(serve().port, post(PREDICT, b"abc") + b"garbage\r\n\r\n")
    statuses = [line.split()[1] for line in answer.split(b"\r\n") if b" 400 " in line]
    assert len(statuses) == 2, answer
    assert answer.index(b"JSON Parse error") < answer.index(b"Malformed HTTP request"), answer


def test_good_pipelined_requests_are_answered_before_the_bad_one(serve):
    get = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    answer = read_all(serve().port, get + get + b"\x16\x03\x01 no request\r\n\r\n")
    assert answer.count(b'{"live": true}') == 2 and b"Malformed HTTP request" in answer, answer
