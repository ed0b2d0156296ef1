"""benchmarks/peers.py's own parts: the ModelConfig answer the peers get (read back with
tritonclient's own messages and client over a real gRPC server) and the per-cell best-of."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper

from benchmarks import peer_onnx, peers
from tests.serving_fixtures import free_port


def _session(tmp_path):
    """A real ONNX graph shaped like the zoo's classifiers: images [N, 28, 28] -> probabilities
    [N, 10] (float32) and classes [N] (int64)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [784, 10],
                           np.linspace(-1, 1, 7840, dtype=np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 784])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
         helper.make_node("ArgMax", ["logits"], ["classes"], axis=-1, keepdims=0)],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch"])],
        [w, shape])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return peer_onnx.session(str(path), 1)


def test_metadata_from_the_onnx_graph(tmp_path):
    sess = _session(tmp_path)
    assert peer_onnx.io_types(sess.get_inputs()) == [
        {"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert peer_onnx.io_types(sess.get_outputs()) == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "classes", "datatype": "INT64", "shape": [-1]}]


def test_model_config_is_what_tritonclient_reads(tmp_path):
    """The handler added to a real grpc.aio server answers tritonclient's get_model_config with
    Triton's ModelConfig: batch dimension out of dims, Triton's datatypes."""
    import tritonclient.grpc.aio as triton
    from tritonclient.grpc import model_config_pb2

    sess = _session(tmp_path)
    port = free_port()

    async def ask():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((peer_onnx.model_config_handler("digits", sess),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            return await client.get_model_config("digits", client_timeout=10)
        finally:
            await client.close()
            await server.stop(0)

    config = asyncio.run(ask()).config
    assert (config.name, config.platform, config.backend) == (
        "digits", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == peer_onnx.MAX_BATCH_SIZE >= 16
    fp32, int64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("images", fp32, [28, 28])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("probabilities", fp32, [10]), ("classes", int64, [])]


def test_best_of_each_side_skips_failed_cells():
    ok = lambda rate: {"rate": rate, "p50_ms": 1.0, "p99_ms": 2.0}  # noqa: E731
    failed = {"error": "failed to get model config"}
    results = {"ours Predict onnx w1": {"b1 c1": ok(900.0), "b16 c8": ok(8000.0)},
               "ours v2 onnx w1": {"b1 c1": ok(1000.0), "b16 c8": failed},
               "KServe 0.21 v2": {"b1 c1": ok(800.0), "b16 c8": ok(10000.0)},
               "MLServer 1.7.1 v2 parallel_workers 0": {"b1 c1": failed, "b16 c8": failed}}
    groups = {"ours Predict onnx w1": "ours", "ours v2 onnx w1": "ours",
              "KServe 0.21 v2": "kserve", "MLServer 1.7.1 v2 parallel_workers 0": "mlserver"}
    rows = peers.summarise(results, groups, ["b1 c1", "b16 c8"])
    assert rows[0] == ("b1 c1", "1,000 (v2 onnx w1)", "1,000", "800", "failed", "1.25x", "-",
                       "1.25x", "-")
    assert rows[1] == ("b16 c8", "8,000 (Predict onnx w1)", "failed", "10,000", "failed",
                       "0.80x", "-", "-", "-")
