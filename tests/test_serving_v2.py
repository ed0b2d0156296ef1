"""The Open Inference Protocol (KServe v2) on our server, with NVIDIA's tritonclient as the real
client (gRPC, and HTTP with binary tensors and JSON): real MNIST digits get exactly the classes
TF Serving's Predict gives on the same server, on both backends, batching on and off; health,
metadata and readiness; bad requests get the right code and a message naming what is wrong.
One server per backend x batching combination (module fixture), and one with the native data
plane (docs/ARCHITECTURE.md, "The native data plane": SavedModel, batching off)."""

from __future__ import annotations

import gzip
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
    data_planes,
    digits,
    exported,
    write_config,
)

pytestmark = pytest.mark.slow
MODELS = ("softmax_regression", "deep_cnn")
BATCHING = "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n"


# (backend, batching, data plane): every combination on the Python plane; the native plane
# where it serves (SavedModel, no batching).
SERVERS = [(backend, batching, plane) for plane in data_planes()
           for backend, batching in (("savedmodel", "off"), ("savedmodel", "on"), ("onnx", "off"),
                                     ("onnx", "on"))
           if plane == "python" or (backend, batching) == ("savedmodel", "off")]


@pytest.fixture(scope="module", params=SERVERS,
                ids=lambda p: f"{p[0]}-batching-{p[1]}" + ("-native" if p[2] == "native" else ""))
def server(request, exported, tmp_path_factory):  # noqa: F811
    backend, batching, plane = request.param
    if plane == "native":
        from serving.native import plane as native

        if not native.built():
            pytest.skip(f"--data_plane native: {native.BINARY} is not built (make native)")
    tmp = tmp_path_factory.mktemp(f"v2-{backend}-{batching}-{plane}")
    config = write_config(tmp / "models.config",
                          {m: {"base": exported / m} for m in MODELS})
    args = ["--model_config_file", str(config), "--backend", backend,
            "--file_system_poll_wait_seconds", "0", "--data_plane", plane]
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
    # --max_request_elements' default over a row of 784, or one batch.
    from serving.core import limits

    assert int(config["max_batch_size"]) == (
        16 if batching else limits.DEFAULT_MAX_REQUEST_ELEMENTS // 784)
    assert ("dynamic_batching" in config) == batching
    if batching:
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]])
            for t in config["input"]] == [("images", "TYPE_FP32", [28, 28])]
    assert {t["name"]: (t["data_type"], [int(d) for d in t.get("dims", [])])
            for t in config["output"]} == {"classes": ("TYPE_INT64", []),
                                            "probabilities": ("TYPE_FP32", [10])}


def test_model_config_over_rest_matches_grpc(server):
    with tgrpc.InferenceServerClient(server.address) as g, \
            thttp.InferenceServerClient(server.rest) as h:
        by_grpc = g.get_model_config("softmax_regression", "1", as_json=True)["config"]
        by_rest = h.get_model_config("softmax_regression", "1")
        assert h.get_model_config("softmax_regression") == by_rest
        for model, version in (("no_such_model", ""), ("softmax_regression", "7")):
            with pytest.raises(InferenceServerException) as e:
                h.get_model_config(model, version)
            assert e.value.status() == "404" and model in e.value.message(), e.value
            assert version in e.value.message()
    # proto JSON writes int64 as strings; the REST answer has numbers, as Triton's
    assert by_rest["max_batch_size"] == int(by_grpc["max_batch_size"])
    assert by_rest["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": [28, 28]}]
    assert {k: by_rest[k] for k in ("name", "platform", "backend")} == {
        k: by_grpc[k] for k in ("name", "platform", "backend")}


def _stats(client, model: str, version: str = "") -> dict:
    """One version's statistics as a dict of numbers, whichever client read them."""
    got = client.get_inference_statistics(model, version, **(
        {"as_json": True} if isinstance(client, tgrpc.InferenceServerClient) else {}))
    (stat,) = got["model_stats"]
    assert (stat["name"], stat["version"]) == (model, version or "1")
    flat = {k: int(stat.get(k, 0)) for k in ("last_inference", "inference_count",
                                              "execution_count")}
    for phase, d in stat["inference_stats"].items():
        flat[phase] = (int(d.get("count", 0)), int(d.get("ns", 0)))
    flat["batches"] = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
                       for b in stat.get("batch_stats", [])}
    return flat


def test_statistics_count_real_inferences_and_failures(server, digits):  # noqa: F811
    x, _ = digits
    model = "softmax_regression"
    with tgrpc.InferenceServerClient(server.address) as g, \
            thttp.InferenceServerClient(server.rest) as h:
        assert "statistics" in h.get_server_metadata()["extensions"]
        before = _stats(g, model, "1")
        assert _stats(h, model) == before  # one server, two transports, the same numbers
        grpc_infer(server, model, x)
        http_infer(server, model, x[:3])
        bad = tgrpc.InferInput("images", [1, 27, 28], "FP32")  # resolved, then refused
        bad.set_data_from_numpy(np.zeros((1, 27, 28), np.float32))
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT|shape"):
            g.infer(model, [bad])
        after = _stats(h, model, "1")
        assert _stats(g, model) == after
        every = g.get_inference_statistics(as_json=True)["model_stats"]
        assert {m["name"] for m in every} == set(MODELS)
        for name, version in (("no_such_model", ""), (model, "7")):
            for c, code in ((g, "StatusCode.NOT_FOUND"), (h, "404")):
                with pytest.raises(InferenceServerException) as e:
                    c.get_inference_statistics(name, version)
                assert e.value.status() == code and name in e.value.message(), e.value
                assert version in e.value.message()

    def delta(phase):
        return after[phase][0] - before[phase][0], after[phase][1] - before[phase][1]

    assert delta("success")[0] == 2 and delta("fail")[0] == 1
    assert after["inference_count"] - before["inference_count"] == len(x) + 3
    assert after["execution_count"] - before["execution_count"] >= 1
    assert after["last_inference"] >= max(before["last_inference"], 1)
    phases = [delta(p) for p in ("compute_input", "queue", "compute_infer", "compute_output")]
    assert [count for count, _ in phases] == [2, 2, 2, 2]  # the refused one never ran
    assert all(ns > 0 for _, ns in phases[::2])
    # Sequential requests: each one's phases are disjoint parts of its own duration.
    assert sum(ns for _, ns in phases) <= delta("success")[1]
    assert sum(after["batches"].values()) - sum(before["batches"].values()) == \
        after["execution_count"] - before["execution_count"]


def test_repository_index_through_tritonclient(server):
    with tgrpc.InferenceServerClient(server.address) as g, \
            thttp.InferenceServerClient(server.rest) as h:
        by_grpc = g.get_model_repository_index(as_json=True)["models"]
        by_rest = h.get_model_repository_index()
    expected = [{"name": m, "version": "1", "state": "READY"} for m in sorted(MODELS)]
    assert [{k: m[k] for k in ("name", "version", "state")} for m in by_rest] == expected
    assert [{k: m[k] for k in ("name", "version", "state")} for m in by_grpc] == expected
    url = f"http://{server.rest}/v2/repository/index"
    for body, status in ((b'{"ready": true}', 200), (b'{"ready": "yes"}', 400)):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body), timeout=30) as r:
                got, answer = r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            got, answer = e.code, json.loads(e.read())
        assert got == status, answer
        if status == 200:
            assert [m["name"] for m in answer] == sorted(MODELS)
        else:
            assert '"ready"' in answer["error"]


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
        (b"\x1f\x8b", {"Content-Encoding": "gzip"}, 400, ["Content-Encoding 'gzip'"]),
        (gzip.compress(json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                               "shape": [1, 28, 28], "data": [0.0] * 784}]
                                   }).encode()), {"Content-Encoding": "gzip"}, 200, []),
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
