"""The Open Inference Protocol (KServe v2) on our server, with NVIDIA's tritonclient as the real
client (gRPC, and HTTP with binary tensors and JSON): real MNIST digits get exactly the classes
TF Serving's Predict gives on the same server, on both backends, batching on and off; health,
metadata and readiness; bad requests get the right code and a message naming what is wrong.
One server per backend x batching combination (module fixture)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.clients.tf_serving import ZooClient
from tests.serving_fixtures import (  # noqa: F401
    ServerProcess,
    digits,
    exported,
    write_config,
)

pytestmark = pytest.mark.slow
MODELS = ("softmax_regression", "deep_cnn")
BATCHING = "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n"


@pytest.fixture(scope="module", params=[("savedmodel", "off"), ("savedmodel", "on"),
                                        ("onnx", "off"), ("onnx", "on")],
                ids=lambda p: f"{p[0]}-batching-{p[1]}")
def server(request, exported, tmp_path_factory):  # noqa: F811
    backend, batching = request.param
    tmp = tmp_path_factory.mktemp(f"v2-{backend}-{batching}")
    config = write_config(tmp / "models.config",
                          {m: {"base": exported / m} for m in MODELS})
    args = ["--model_config_file", str(config), "--backend", backend,
            "--file_system_poll_wait_seconds", "0"]
    if batching == "on":
        (tmp / "batching.config").write_text(BATCHING)
        args += ["--enable_batching", "--batching_parameters_file", str(tmp / "batching.config")]
    s = ServerProcess(*args, log=tmp / "server.log")
    yield s
    assert s.stop() == 0, s.logs()


@pytest.fixture(scope="module")
def predicted(server, digits):  # noqa: F811
    """model -> (probabilities, classes) of the digits through TF Serving's Predict."""
    x, _ = digits
    with ZooClient(server.address, timeout=60) as c:
        return {m: (lambda o: (o["probabilities"], o["classes"]))(c.predict(m, x))
                for m in MODELS}


def grpc_infer(server, model, x, outputs=("classes", "probabilities"), raw=True, version=""):
    with tgrpc.InferenceServerClient(server.address) as c:
        given = tgrpc.InferInput("images", list(x.shape), "FP32")
        if raw:
            given.set_data_from_numpy(x)
        else:  # typed contents: tritonclient sends raw only, so fill the proto ourselves
            given._input.contents.fp32_contents.extend(x.ravel().tolist())
        result = c.infer(model, [given], model_version=version,
                         outputs=[tgrpc.InferRequestedOutput(o) for o in outputs],
                         client_timeout=60)
        return {o: result.as_numpy(o) for o in outputs}, result.get_response()


def http_infer(server, model, x, outputs=("classes", "probabilities"), binary=True):
    with thttp.InferenceServerClient(server.rest, connection_timeout=60,
                                     network_timeout=60) as c:
        given = thttp.InferInput("images", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        result = c.infer(model, [given], outputs=[thttp.InferRequestedOutput(o, binary_data=binary)
                                                  for o in outputs])
        return {o: result.as_numpy(o) for o in outputs}, result.get_response()


@pytest.mark.parametrize("transport", ["grpc-raw", "grpc-contents", "http-binary", "http-json"])
@pytest.mark.parametrize("model", MODELS)
def test_v2_classifies_mnist_as_predict_does(server, predicted, digits, transport, model):  # noqa: F811
    x, labels = digits
    if transport.startswith("grpc"):
        out, response = grpc_infer(server, model, x, raw=transport == "grpc-raw")
        assert len(response.raw_output_contents) == 2  # what tritonclient's as_numpy reads
    else:
        out, response = http_infer(server, model, x, binary=transport == "http-binary")
        binary = [o for o in response["outputs"] if "binary_data_size" in o.get("parameters", {})]
        assert len(binary) == (2 if transport == "http-binary" else 0)
    probabilities, classes = predicted[model]
    assert out["classes"].dtype == np.int64 and out["classes"].shape == (len(x),)
    np.testing.assert_array_equal(out["classes"], classes)
    np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    if model == "softmax_regression":  # 30 steps of training: most digits are right
        assert np.mean(out["classes"] == labels) > 0.6


def test_requested_outputs_versions_and_single_rows(server, predicted, digits):  # noqa: F811
    x, _ = digits
    out, response = grpc_infer(server, "deep_cnn", x[:1], outputs=("classes",), version="1")
    assert [o.name for o in response.outputs] == ["classes"]
    assert response.model_version == "1"
    assert out["classes"][0] == predicted["deep_cnn"][1][0]
    out, response = http_infer(server, "softmax_regression", x[3:4], outputs=("probabilities",))
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(out["probabilities"][0], predicted["softmax_regression"][0][3],
                               rtol=1e-4, atol=1e-6)


def test_health_and_metadata_on_both_transports(server):
    with tgrpc.InferenceServerClient(server.address) as g, \
            thttp.InferenceServerClient(server.rest) as h:
        for c in (g, h):
            assert c.is_server_live() and c.is_server_ready()
            assert c.is_model_ready("deep_cnn") and c.is_model_ready("deep_cnn", "1")
            assert not c.is_model_ready("deep_cnn", "2")
            assert not c.is_model_ready("no_such_model")
        meta = h.get_server_metadata()
        assert meta["name"] == "keras-model-zoo" and "binary_tensor_data" in meta["extensions"]
        assert g.get_server_metadata(as_json=True)["name"] == "keras-model-zoo"
        for m in (g.get_model_metadata("softmax_regression", as_json=True),
                  h.get_model_metadata("softmax_regression", "1")):
            assert m["name"] == "softmax_regression" and m["versions"] == ["1"]
            assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]])  # JSON of int64:
                    for i in m["inputs"]] == [("images", "FP32", [-1, 28, 28])]  # strings
            assert {o["name"]: o["datatype"] for o in m["outputs"]} == {
                "classes": "INT64", "probabilities": "FP32"}


def test_model_config_through_tritonclient(server):
    with tgrpc.InferenceServerClient(server.address) as g:
        assert "model_configuration" in g.get_server_metadata(as_json=True)["extensions"]
        config = g.get_model_config("softmax_regression", as_json=True)["config"]
        with pytest.raises(InferenceServerException, match="no_such_model") as e:
            g.get_model_config("no_such_model")
        assert e.value.status() == "StatusCode.NOT_FOUND"
    assert config["name"] == "softmax_regression"
    assert (config["platform"], config["backend"]) in (
        ("tensorflow_savedmodel", "tensorflow"), ("onnxruntime_onnx", "onnxruntime"))
    batching = "--enable_batching" in server.proc.args
    # 64 MiB of elements (--max_request_elements' default) over a row of 784, or one batch.
    assert int(config["max_batch_size"]) == (16 if batching else (64 << 20) // 784)
    assert ("dynamic_batching" in config) == batching
    if batching:
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]])
            for t in config["input"]] == [("images", "TYPE_FP32", [28, 28])]
    assert {t["name"]: (t["data_type"], [int(d) for d in t.get("dims", [])])
            for t in config["output"]} == {"classes": ("TYPE_INT64", []),
                                            "probabilities": ("TYPE_FP32", [10])}


def grpc_error(server, request) -> grpc.RpcError:
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, timeout=60)
        return e.value


def infer_request(model="softmax_regression", shape=(1, 28, 28), datatype="FP32", raw=None,
                  outputs=()):
    r = service_pb2.ModelInferRequest(model_name=model)
    r.inputs.add(name="images", datatype=datatype, shape=shape)
    r.raw_input_contents.append(np.zeros(shape, np.float32).tobytes() if raw is None else raw)
    for o in outputs:
        r.outputs.add(name=o)
    return r


@pytest.mark.parametrize("request_, code, words", [
    (infer_request(model="no_such_model"), "NOT_FOUND", ["no_such_model"]),
    (infer_request(datatype="FP64", raw=np.zeros((1, 28, 28)).tobytes()), "INVALID_ARGUMENT",
     ['input "images"', "FP64", "FP32 [-1,28,28]"]),
    (infer_request(shape=(1, 28)), "INVALID_ARGUMENT",
     ['input "images"', "[1,28]", "FP32 [-1,28,28]"]),
    (infer_request(raw=b"\0" * 100), "INVALID_ARGUMENT",
     ['input "images"', "100 bytes", "3136"]),
    (infer_request(outputs=["logits"]), "INVALID_ARGUMENT",
     ['"logits"', "classes", "probabilities"]),
    (infer_request(shape=(1 << 20, 28, 28), raw=b""), "INVALID_ARGUMENT",
     ['input "images"', "--max_request_elements"]),
], ids=["unknown-model", "wrong-datatype", "wrong-shape", "raw-size", "unknown-output",
        "too-many-elements"])
def test_bad_grpc_requests_get_the_right_code_naming_the_input(server, request_, code, words):
    e = grpc_error(server, request_)
    assert e.code().name == code, e.details()
    for w in words:
        assert w in e.details(), e.details()


def test_bad_requests_through_tritonclient_and_rest(server, digits):  # noqa: F811
    x, _ = digits
    with tgrpc.InferenceServerClient(server.address) as c:
        given = tgrpc.InferInput("pixels", list(x[:1].shape), "FP32")
        given.set_data_from_numpy(x[:1])
        with pytest.raises(InferenceServerException) as e:
            c.infer("softmax_regression", [given])
        assert "INVALID_ARGUMENT" in e.value.status() and '"pixels"' in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            c.get_system_shared_memory_status()  # a Triton extension we do not implement
        assert "UNIMPLEMENTED" in e.value.status() and "ModelInfer" in e.value.message()
    raw = np.zeros((1, 28, 28), np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28],
                                     "parameters": {"binary_data_size": len(raw) - 4}}]}).encode()
    for body, headers, status, words in [
        (header + raw, {"Inference-Header-Content-Length": str(len(header))}, 400,
         ["binary bytes"]),
        (json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28],
                                 "data": [0.0] * 10}]}).encode(), {}, 400,
         ['input "images"', "10 values", "784"]),
        (json.dumps({"inputs": [{"name": "images", "datatype": "INT64", "shape": [1, 28, 28],
                                 "data": [0] * 784}]}).encode(), {}, 400,
         ['input "images"', "INT64", "FP32 [-1,28,28]"]),
        (b"{", {}, 400, ["JSON"]),
        (b"\x1f\x8b", {"Content-Encoding": "gzip"}, 400, ["Content-Encoding gzip"]),
    ]:
        answer = rest_call(server, "POST", "/v2/models/softmax_regression/infer", body, headers)
        assert answer[0] == status and all(w in answer[1]["error"] for w in words), answer
    good = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28],
                                   "data": [0.0] * 784}]}).encode()
    assert rest_call(server, "POST", "/v2/models/softmax_regression/infer", good)[0] == 200
    assert rest_call(server, "POST", "/v2/models/nothing/infer", good)[0] == 404
    assert rest_call(server, "POST", "/v2/models/deep_cnn/versions/2/infer", good)[0] == 404
    assert rest_call(server, "GET", "/v2/models/deep_cnn/versions/x")[0] == 400
    assert rest_call(server, "GET", "/v2/nothing")[0] == 404
    # and the server is still up and right
    out, _ = grpc_infer(server, "softmax_regression", x[:2])
    assert out["classes"].shape == (2,)


def rest_call(server, method, path, body=None, headers=None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.rest}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_v2_requests_are_counted_in_the_metrics(server, digits):  # noqa: F811
    x, _ = digits
    grpc_infer(server, "softmax_regression", x[:1])
    http_infer(server, "softmax_regression", x[:1])
    with urllib.request.urlopen(f"http://{server.rest}/monitoring/prometheus/metrics",
                                timeout=60) as r:
        text = r.read().decode()
    for api, entry in (("ModelInfer", "GRPC"), ("infer", "REST")):
        counts = [int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                  if line.startswith(":tensorflow:serving:request_latency_count{")
                  and f'API="{api}"' in line and f'entrypoint="{entry}"' in line
                  and 'model_name="softmax_regression"' in line]
        assert counts and counts[0] >= 1, text[-3000:]
