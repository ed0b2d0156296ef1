# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""Contract suite: every PredictionService/ModelService method and every error, over gRPC and
REST, against a real server process (ours by default; any TF-Serving-compatible server when
ZOO_SERVING_ADDRESS / ZOO_SERVING_REST are set; see serving_fixtures.py)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.clients.errors import ClientError
from serving.clients.tf_serving import ZooClient
from serving.runtime import tensors
from tests.serving_fixtures import (  # noqa: F401
    contract_server,
    digits,
    exported,
    onnx_reference,
    predict_request,
)

pytestmark = pytest.mark.slow
ZOO_ONLY = "behaviour of this project's server, not TF Serving's"


@pytest.fixture(scope="module")
def grpc_stubs(contract_server):
    channel = grpc.insecure_channel(contract_server[0])
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


@pytest.fixture(scope="module")
def client(contract_server):
    with ZooClient(contract_server[0], rest_address=contract_server[1], timeout=30) as c:
        yield c


def code_of(call, request):
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    return e.value.code(), e.value.details()


def rest(contract_server, path, body=None, content_type="application/json"):
    if not contract_server[1]:
        pytest.skip("no REST address (set ZOO_SERVING_REST)")
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{contract_server[1]}{path}", data=data,
                                 headers={"Content-Type": content_type} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if "json" in r.headers["Content-Type"]
                              else raw.decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --------------------------------------------------------------------------- gRPC: Predict
def test_predict_classifies_test_digits_like_the_exported_graph(client, contract_server, digits):
    x, y = digits
    out = client.predict("softmax_regression", x)
    assert out["probabilities"].shape == (64, 10) and out["probabilities"].dtype == np.float32
    assert out["classes"].dtype == np.int64
    np.testing.assert_array_equal(out["classes"], out["probabilities"].argmax(-1))
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert np.mean(out["classes"] == y) > 0.6  # 30 training steps reach ~0.83
    if contract_server[2] is not None:
        ref = onnx_reference(contract_server[2] / "softmax_regression" / "1", x)
        np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=1e-4)


def test_predict_accepts_typed_value_fields_as_well_as_tensor_content(grpc_stubs, digits):
    import tensorflow as tf

    x = digits[0][:3]
    fast = grpc_stubs[0].Predict(predict_request(x=x), timeout=30)
    slow = predict_request()
    typed = slow.inputs["images"]
    typed.dtype = tf.float32.as_datatype_enum
    for s in x.shape:
        typed.tensor_shape.dim.add().size = s
    typed.float_val.extend(x.ravel().tolist())
    assert not slow.inputs["images"].tensor_content
    slow_out = grpc_stubs[0].Predict(slow, timeout=30)
    a = tf.make_ndarray(fast.outputs["probabilities"])
    b = tf.make_ndarray(slow_out.outputs["probabilities"])
    np.testing.assert_array_equal(a, b)


def test_predict_response_names_model_version_and_signature(grpc_stubs, digits):
    r = grpc_stubs[0].Predict(predict_request(x=digits[0][:1]), timeout=30)
    assert r.model_spec.name == "softmax_regression"
    assert r.model_spec.version.value == 1
    assert r.model_spec.signature_name == "serving_default"


def test_predict_by_version_and_by_label(client, digits):
    x = digits[0][:4]
    latest = client.predict("softmax_regression", x)["probabilities"]
    np.testing.assert_array_equal(client.predict("softmax_regression", x, version=1)
                                  ["probabilities"], latest)
    np.testing.assert_array_equal(client.predict("softmax_regression", x, label="stable")
                                  ["probabilities"], latest)


def test_output_filter_returns_only_the_named_outputs(client, digits):
    out = client.predict("softmax_regression", digits[0][:2], output_filter=["classes"])
    assert set(out) == {"classes"}


def test_deep_cnn_predicts_what_the_exported_model_computes(client, exported, digits):
    x = digits[0][:16]
    out = client.predict("deep_cnn", x)
    ref = onnx_reference(exported / "deep_cnn" / "1", x)
    assert out["probabilities"].shape == (16, 10)
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=1e-4)
    np.testing.assert_array_equal(out["classes"], ref["classes"])


@pytest.mark.parametrize("spec, code", [
    ({"model": "no_such_model"}, grpc.StatusCode.NOT_FOUND),
    ({"version": 99}, grpc.StatusCode.NOT_FOUND),
    ({"version_label": "no_such_label"}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"signature_name": "no_such_signature"}, grpc.StatusCode.FAILED_PRECONDITION),
])
def test_predict_status_codes(grpc_stubs, digits, spec, code):
    assert code_of(grpc_stubs[0].Predict, predict_request(x=digits[0][:1], **spec))[0] == code


def test_wrong_input_name_is_invalid_argument_naming_the_expected_input(grpc_stubs, digits):
    r = predict_request()
    tensors.to_proto(digits[0][:1], r.inputs["pixels"])
    code, details = code_of(grpc_stubs[0].Predict, r)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixels" in details and "images" in details


def test_missing_inputs_are_invalid_argument(grpc_stubs):
    code, details = code_of(grpc_stubs[0].Predict, predict_request())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images" in details


def test_wrong_dtype_is_invalid_argument(grpc_stubs, digits):
    code, details = code_of(grpc_stubs[0].Predict,
                            predict_request(x=digits[0][:1].astype(np.float64)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images" in details


@pytest.mark.parametrize("shape", [(1, 28, 27), (1, 784), (28, 28)])
def test_wrong_shape_is_invalid_argument(grpc_stubs, shape):
    code, details = code_of(grpc_stubs[0].Predict,
                            predict_request(x=np.zeros(shape, np.float32)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images" in details


def test_tensor_content_of_the_wrong_length_is_invalid_argument(grpc_stubs):
    r = predict_request(x=np.zeros((2, 28, 28), np.float32))
    r.inputs["images"].tensor_content = r.inputs["images"].tensor_content[:-4]
    assert code_of(grpc_stubs[0].Predict, r)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_output_filter_is_invalid_argument(grpc_stubs, digits):
    r = predict_request(x=digits[0][:1])
    r.output_filter.append("logits")
    assert code_of(grpc_stubs[0].Predict, r)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_empty_batch_gets_empty_outputs(client):
    out = client.predict("softmax_regression", np.zeros((0, 28, 28), np.float32))
    assert out["probabilities"].shape == (0, 10) and out["classes"].shape == (0,)


def test_nan_and_inf_inputs_are_answered_and_the_server_keeps_serving(client, digits):
    x = digits[0][:2].copy()
    x[0, 0, 0], x[1, 5, 5] = np.nan, np.inf
    out = client.predict("softmax_regression", x)  # TF Serving computes them too
    assert out["probabilities"].shape == (2, 10)
    assert np.isfinite(client.predict("deep_cnn", digits[0][:1])["probabilities"]).all()


def test_oversized_message_is_refused_and_the_server_keeps_serving(client, contract_server,
                                                                   digits):
    if contract_server[2] is None:
        pytest.skip(ZOO_ONLY + " (--max_request_bytes)")
    big = np.zeros((3000, 28, 28), np.float32)  # 9.4 MB > the 8 MiB limit the fixture sets
    with pytest.raises(ClientError) as e:
        client.predict("softmax_regression", big)
    assert e.value.code == "RESOURCE_EXHAUSTED"
    assert client.predict("softmax_regression", digits[0][:1])["classes"].shape == (1,)


# --------------------------------------------------------------------------- gRPC: the rest
def test_get_model_metadata_returns_the_signature(client):
    sig = client.metadata("softmax_regression")["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert [d.size for d in sig.inputs["images"].tensor_shape.dim] == [-1, 28, 28]
    assert set(sig.outputs) == {"probabilities", "classes"}


@pytest.mark.parametrize("spec, code", [
    ({"model": "no_such_model"}, grpc.StatusCode.NOT_FOUND),
    ({"version": 99}, grpc.StatusCode.NOT_FOUND),
    ({"version_label": "no_such_label"}, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_get_model_metadata_status_codes(grpc_stubs, spec, code):
    r = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    r.model_spec.CopyFrom(predict_request(**spec).model_spec)
    assert code_of(grpc_stubs[0].GetModelMetadata, r)[0] == code


def test_get_model_status(client):
    assert client.status("softmax_regression") == [{"version": 1, "state": "AVAILABLE",
                                                     "error": ""}]
    assert client.status("softmax_regression", label="stable")[0]["version"] == 1


@pytest.mark.parametrize("spec, code", [
    ({"model": "no_such_model"}, grpc.StatusCode.NOT_FOUND),
    ({"version": 99}, grpc.StatusCode.NOT_FOUND),
])
def test_get_model_status_status_codes(grpc_stubs, spec, code):
    r = get_model_status_pb2.GetModelStatusRequest()
    r.model_spec.CopyFrom(predict_request(**spec).model_spec)
    assert code_of(grpc_stubs[1].GetModelStatus, r)[0] == code


def test_classify_regress_multi_inference_say_why_they_are_unimplemented(grpc_stubs,
                                                                         contract_server):
    if contract_server[2] is None:
        pytest.skip(ZOO_ONLY)
    calls = [(grpc_stubs[0].Classify, classification_pb2.ClassificationRequest()),
             (grpc_stubs[0].Regress, regression_pb2.RegressionRequest()),
             (grpc_stubs[0].MultiInference, inference_pb2.MultiInferenceRequest())]
    for call, request in calls:
        request_spec = getattr(request, "model_spec", None)
        if request_spec is not None:
            request_spec.name = "softmax_regression"
        code, details = code_of(call, request)
        assert code == grpc.StatusCode.UNIMPLEMENTED and "Predict" in details


def test_health_and_reflection(contract_server, client):
    assert client.health() == "SERVING"
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    if contract_server[2] is None:
        pytest.skip("TF Serving has no reflection service")
    with grpc.insecure_channel(contract_server[0]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            "grpc.health.v1.Health"} <= names


# --------------------------------------------------------------------------- REST
def test_rest_model_status(contract_server):
    status, body = rest(contract_server, "/v1/models/softmax_regression")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert rest(contract_server, "/v1/models/softmax_regression/versions/1")[0] == 200
    assert rest(contract_server, "/v1/models/softmax_regression/labels/stable")[0] == 200


def test_rest_metadata(contract_server):
    status, body = rest(contract_server, "/v1/models/softmax_regression/metadata")
    assert status == 200
    assert body["model_spec"]["name"] == "softmax_regression"
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_FLOAT"


def test_rest_predict_row_and_columnar_formats_agree_with_grpc(contract_server, client, digits):
    x = digits[0][:3]
    expected = client.predict("softmax_regression", x)
    status, rows = rest(contract_server, "/v1/models/softmax_regression:predict",
                        {"instances": x.tolist()})
    assert status == 200
    assert [p["classes"] for p in rows["predictions"]] == expected["classes"].tolist()
    np.testing.assert_allclose([p["probabilities"] for p in rows["predictions"]],
                               expected["probabilities"], rtol=1e-6)
    status, cols = rest(contract_server, "/v1/models/softmax_regression/versions/1:predict",
                        {"signature_name": "serving_default", "inputs": {"images": x.tolist()}})
    assert status == 200 and cols["outputs"]["classes"] == expected["classes"].tolist()
    status, named = rest(contract_server, "/v1/models/softmax_regression/labels/stable:predict",
                         {"instances": [{"images": row} for row in x.tolist()]})
    assert status == 200 and [p["classes"] for p in named["predictions"]] == \
        expected["classes"].tolist()


def test_rest_integer_pixels_are_converted_to_the_signature_dtype(contract_server, digits):
    x = digits[0][:1].astype(int)
    status, body = rest(contract_server, "/v1/models/softmax_regression:predict",
                        {"instances": x.tolist()})
    assert status == 200 and len(body["predictions"]) == 1


@pytest.mark.parametrize("path, body, code", [
    ("/v1/models/no_such_model:predict", {"instances": [[[0] * 28] * 28]}, 404),
    ("/v1/models/softmax_regression/versions/99:predict", {"instances": [[[0] * 28] * 28]}, 404),
    ("/v1/models/softmax_regression/labels/nope:predict", {"instances": [[[0] * 28] * 28]}, 400),
    ("/v1/models/softmax_regression:predict", {"instances": [[0] * 28]}, 400),
    ("/v1/models/softmax_regression:predict", {"instances": [[[0] * 28] * 27]}, 400),
    ("/v1/models/softmax_regression:predict", {"instances": [[[0] * 28] * 28, [[0] * 27]]}, 400),
    ("/v1/models/softmax_regression:predict", {"inputs": {"pixels": [[[0] * 28] * 28]}}, 400),
    ("/v1/models/softmax_regression:predict",
     {"signature_name": "nope", "instances": [[[0] * 28] * 28]}, 400),
    ("/v1/models/softmax_regression:predict", {"no_instances": 1}, 400),
    ("/v1/models/softmax_regression:predict", b"{not json", 400),
    ("/v1/models/softmax_regression:predict", [1, 2], 400),
    ("/v1/models/no_such_model", None, 404),
    ("/v1/models/softmax_regression/versions/99", None, 404),
    ("/v1/no/such/path", None, 404),
])
def test_rest_errors_are_json_with_tf_serving_http_codes(contract_server, path, body, code):
    status, answer = rest(contract_server, path, body)
    assert status == code, answer
    assert isinstance(answer["error"], str) and answer["error"]


def test_rest_wrong_content_type_gets_a_clear_answer(contract_server):
    status, answer = rest(contract_server, "/v1/models/softmax_regression:predict",
                          b"\x89PNG\r\n", content_type="image/png")
    assert status == 400 and "JSON" in answer["error"]


def test_rest_nan_input_is_answered(contract_server):
    body = b'{"instances": [' + json.dumps([[0.0] * 28] * 28).replace("0.0", "NaN", 1).encode() \
        + b"]}"
    status, answer = rest(contract_server, "/v1/models/softmax_regression:predict", body)
    assert status == 200
    assert math.isnan(answer["predictions"][0]["probabilities"][0])


def test_rest_list_models_and_prometheus_metrics(contract_server, client, digits):
    if contract_server[2] is None:
        pytest.skip(ZOO_ONLY + " (GET /v1/models, metrics path)")
    names = {m["name"] for m in client.list()}
    assert names == {"softmax_regression", "deep_cnn"}
    client.predict("deep_cnn", digits[0][:1])
    status, text = rest(contract_server, "/monitoring/prometheus/metrics")
    assert status == 200
    line = next(s for s in text.splitlines() if s.startswith(
        ':tensorflow:serving:request_count{model_name="deep_cnn",status="OK"} '))
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert (':tensorflow:serving:request_latency_bucket{API="Predict",entrypoint="GRPC",'
            'le="10.0",model_name="deep_cnn"}') in text


# --------------------------------------------------------------------------- the client CLI
def run_cli(contract_server, *args):
    import subprocess
    import sys

    from tests.serving_fixtures import ENV, ROOT

    rest_args = ["--rest", contract_server[1]] if contract_server[1] else []
    return subprocess.run([sys.executable, "-m", "serving.client", "--address",
                           contract_server[0], *rest_args, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_cli_predicts_mnist_digits_and_prints_accuracy(contract_server):
    r = run_cli(contract_server, "predict", "softmax_regression", "--mnist-test", "16")
    assert r.returncode == 0, r.stderr
    accuracy = float(r.stdout.splitlines()[-1].split()[1])
    assert 0.5 < accuracy <= 1.0


def test_cli_errors_are_one_readable_line(contract_server):
    r = run_cli(contract_server, "status", "no_such_model")
    assert r.returncode == 1
    lines = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert lines == ["error: NOT_FOUND: Could not find any versions of model no_such_model"]
    assert "Traceback" not in r.stderr
