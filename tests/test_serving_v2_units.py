"""The Open Inference Protocol's codecs in-process (no server, no model): bodies written by
tritonclient's own HTTP client are read by serving/protocols/open_inference/rest_api.py, our
answers are read back by tritonclient's InferResult, and sizes that do not add up are refused
naming the input."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb

from serving.core.errors import ServingError
from serving.protocols.open_inference import grpc_api as v2_grpc
from serving.protocols.open_inference import rest_api as v2_rest
from serving.protocols.open_inference import tensors as v2_tensors
from serving.protocols.open_inference.dataplane import InferResult, model_spec
from serving.transports import http_server


def tritonclient_body(arrays: dict[str, np.ndarray], binary: bool, outputs=()):
    inputs = []
    for name, a in arrays.items():
        i = thttp.InferInput(name, list(a.shape), v2_tensors.OF_NUMPY[a.dtype])
        i.set_data_from_numpy(a, binary_data=binary)
        inputs.append(i)
    requested = [thttp.InferRequestedOutput(o, binary_data=binary) for o in outputs] or None
    return thttp.InferenceServerClient.generate_request_body(inputs, outputs=requested)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_bodies_decode_and_our_answers_read_back(binary):
    import json

    rng = np.random.default_rng(0)
    arrays = {"images": rng.random((3, 28, 28), np.float32) * 255,
              "ids": np.array([[1, -2], [3, 2**40], [0, 7]], np.int64),
              "mask": np.array([True, False, True])}
    body, header_length = tritonclient_body(arrays, binary, outputs=["probabilities", "classes"])
    header, binary_part = (v2_tensors.split_binary(body, str(header_length))
                           if header_length is not None else (body, memoryview(b"")))
    doc = json.loads(header)
    inputs, requested, _ = v2_rest.parse_request(doc, binary_part)
    decoded = {i.name: i.decode() for i in inputs}
    assert list(requested) == ["probabilities", "classes"]
    for name, a in arrays.items():
        assert decoded[name].dtype == a.dtype
        np.testing.assert_array_equal(decoded[name], a)

    outputs = {"probabilities": rng.random((3, 10), np.float32),
               "classes": np.array([4, 0, 9], np.int64)}
    response = v2_rest.encode_response(doc, InferResult("m", 2, outputs), requested, False)
    length = response.headers.get(v2_tensors.INFERENCE_HEADER)
    assert (length is not None) == binary
    result = thttp.InferResult.from_response_body(response.body, header_length=
                                                  int(length) if length else None)
    assert result.get_response()["model_version"] == "2"
    for name, a in outputs.items():
        np.testing.assert_array_equal(result.as_numpy(name), a)


@pytest.mark.parametrize("doc, binary, words", [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                  "parameters": {"binary_data_size": 8}}]}, b"\0" * 12, ["4 binary bytes"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                  "parameters": {"binary_data_size": 16}}]}, b"\0" * 8, ['input "x"', "16"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                  "parameters": {"binary_data_size": 8}}]}, b"\0" * 8,
     ['input "x"', "8 bytes", "FP32 [3] needs 12"]),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, b"",
     ['input "x"', "'BYTES' is not supported"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, -1], "data": []}]}, b"",
     ['input "x"', "negative"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "2", "data": []}]}, b"",
     ['input "x"', "shape must be a list of integers"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}, b"",
     ['input "x"', '"data"']),
    ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": ["a", "b"]}]}, b"",
     ['input "x"', "INT32"]),
    ({"inputs": {"x": 1}}, b"", ['"inputs" must be a list']),
])
def test_malformed_rest_requests_name_what_is_wrong(doc, binary, words):
    with pytest.raises(ServingError) as e:
        inputs, _, _ = v2_rest.parse_request(doc, memoryview(binary))
        for i in inputs:
            i.decode()
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for w in words:
        assert w in e.value.message, e.value.message


def test_grpc_inputs_raw_and_typed_and_their_sizes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    r.raw_input_contents.append(x.tobytes())
    np.testing.assert_array_equal(v2_grpc.wire_inputs(r)[0].decode(), x)
    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(
        x.ravel().tolist())
    np.testing.assert_array_equal(v2_grpc.wire_inputs(r)[0].decode(), x)
    r.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(ServingError, match='input "x": contents.fp32_contents holds 7 values'):
        v2_grpc.wire_inputs(r)[0].decode()
    r.raw_input_contents.append(b"")  # and now both
    with pytest.raises(ServingError, match='input "x" has both contents and raw'):
        v2_grpc.wire_inputs(r)
    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(ServingError, match="FP16 has no typed contents field"):
        v2_grpc.wire_inputs(r)[0].decode()


def test_versions_and_headers():
    assert model_spec("m", "").WhichOneof("version_choice") is None
    assert model_spec("m", "7").version.value == 7
    for bad in ("x", "-1", "1.0", "٣", str(2**63)):
        with pytest.raises(ServingError, match="is not a version number"):
            model_spec("m", bad)
    for bad in ("x", "-1", "100"):
        with pytest.raises(ServingError, match="Inference-Header-Content-Length"):
            v2_tensors.split_binary(b"{}", bad)
    assert http_server.HTTP_CODES[grpc.StatusCode.INVALID_ARGUMENT] == 400


def test_inputs_are_checked_against_the_signature_in_v2_terms():
    import types

    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    from serving.core.server_core import ServerCore
    from serving.protocols.open_inference.dataplane import DataPlane, WireInput
    from serving.runtime.backends import Signature, TensorSpec

    sig = Signature("serving_default",
                    {"a": TensorSpec(types_pb2.DT_FLOAT, (-1, 2)),
                     "b": TensorSpec(types_pb2.DT_INT64, (-1,))},
                    {"y": TensorSpec(types_pb2.DT_FLOAT, (-1,))}, meta_graph_pb2.SignatureDef())
    core = ServerCore(max_request_elements=100)
    plane, version = DataPlane(core), types.SimpleNamespace(name="m", version=3)

    def check(*inputs):
        with pytest.raises(ServingError) as e:
            plane._check(version, sig, [WireInput(*i, None) for i in inputs])
        return e.value.message

    expects = 'model m version 3 expects inputs "a" FP32 [-1,2], "b" INT64 [-1]'
    assert check(("a", "FP32", (2, 2))) == f'input "b" is missing: {expects}'
    assert check(("a", "FP32", (2, 2)), ("a", "FP32", (2, 2))) == \
        'input "a" is given more than once'
    assert check(("c", "FP32", (1,))).startswith('unexpected input "c": ')
    assert check(("a", "FP64", (2, 2)), ("b", "INT64", (2,))) == \
        f'input "a" has datatype FP64 but {expects}'
    assert check(("a", "FP32", (2, 3)), ("b", "INT64", (2,))) == \
        f'input "a" has shape [2,3] but {expects}'
    assert "all inputs must have the same batch size" in check(("a", "FP32", (2, 2)),
                                                               ("b", "INT64", (3,)))
    assert "--max_request_elements" in check(("a", "FP32", (60, 2)), ("b", "INT64", (60,)))
    plane._check(version, sig, [WireInput("b", "INT64", (5,), None),
                                WireInput("a", "FP32", (5, 2), None)])  # any order
    with pytest.raises(ServingError, match='requested output "z" is not an output of model m'):
        plane._outputs(version, sig, ["y", "z"])
    core.executor.shutdown()
    core.lifecycle.batch_executor.shutdown()
    core.lifecycle.load_executor.shutdown()
