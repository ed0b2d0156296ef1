"""What the two peer servers of benchmarks/peers.py share: one ONNX Runtime session, its inputs
and outputs as v2 metadata, and an answer to Triton's ModelConfig RPC.

Imported by benchmarks/peer_kserve.py and benchmarks/peer_mlserver.py inside the peers' own
venvs (run as files, so this is a top-level module there), never by the project's code.

Neither KServe nor MLServer implements Triton's model configuration extension, and
perf_analyzer's triton kind asks `ModelConfig` once before it sends load (it exits with
"failed to get model config: Method not found!" otherwise). So each peer gets that one RPC
added beside its own GRPCInferenceService: a fixed answer built here from the ONNX graph. It is
not on the inference path; ModelInfer stays the peer's own.
"""

from __future__ import annotations

import grpc
import onnxruntime as ort

# ONNX Runtime's type names -> v2 datatypes (the Open Inference Protocol's names).
V2_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
            "tensor(int32)": "INT32", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}
# What perf_analyzer may send per request; the peers take any batch (their models' first
# dimension is dynamic), this only tells the tool that batching is allowed.
MAX_BATCH_SIZE = 64
SERVICE = "inference.GRPCInferenceService"


def session(path: str, threads: int = 0, spinning: bool = True) -> ort.InferenceSession:
    """ONNX Runtime's defaults (threads 0: its own choice; idle threads spin), as the peers'
    docs' examples use it; spinning=False as our server runs it (serving/runtime/backends.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def io_types(args) -> list[dict]:
    """ONNX graph inputs or outputs as v2 metadata: name, datatype, shape (-1 where dynamic)."""
    return [{"name": a.name, "datatype": V2_TYPES[a.type],
             "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]


# Triton's DataType enum (model_config.proto) for the v2 datatypes above.
TRITON_TYPES = {"BOOL": 1, "UINT8": 2, "INT32": 8, "INT64": 9, "FP32": 11, "FP64": 12}


def _config_message_class():
    """ModelConfigResponse with the few fields of Triton's published model_config.proto that
    perf_analyzer reads, built from a descriptor in a private pool: both peers register their own
    `inference.*` protos in the default pool, where tritonclient's would clash with them."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="peer_model_config.proto", package="inference",
                                           syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            m.field.add(name=field_name, number=number, type=kind, label=label,
                        type_name=type_name)

    message("ModelInput", ("name", 1, F.TYPE_STRING, one, None),
            ("data_type", 2, F.TYPE_INT32, one, None), ("dims", 4, F.TYPE_INT64, many, None))
    message("ModelOutput", ("name", 1, F.TYPE_STRING, one, None),
            ("data_type", 2, F.TYPE_INT32, one, None), ("dims", 3, F.TYPE_INT64, many, None))
    message("ModelConfig", ("name", 1, F.TYPE_STRING, one, None),
            ("platform", 2, F.TYPE_STRING, one, None),
            ("max_batch_size", 4, F.TYPE_INT32, one, None),
            ("input", 5, F.TYPE_MESSAGE, many, ".inference.ModelInput"),
            ("output", 6, F.TYPE_MESSAGE, many, ".inference.ModelOutput"),
            ("backend", 17, F.TYPE_STRING, one, None))
    message("ModelConfigResponse",
            ("config", 1, F.TYPE_MESSAGE, one, ".inference.ModelConfig"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "inference.ModelConfigResponse"))


def model_config_response(name: str, sess: ort.InferenceSession) -> bytes:
    """Triton's ModelConfigResponse for the graph, serialised: the batch dimension left out of
    dims, as Triton does for a model with max_batch_size > 0."""
    def tensors(args):
        return [{"name": t["name"], "data_type": TRITON_TYPES[t["datatype"]],
                 "dims": t["shape"][1:]} for t in io_types(args)]

    response = _config_message_class()()
    response.config.name, response.config.max_batch_size = name, MAX_BATCH_SIZE
    response.config.platform, response.config.backend = "onnxruntime_onnx", "onnxruntime"
    for t in tensors(sess.get_inputs()):
        response.config.input.add(**t)
    for t in tensors(sess.get_outputs()):
        response.config.output.add(**t)
    return response.SerializeToString()


def model_config_handler(name: str, sess: ort.InferenceSession) -> grpc.GenericRpcHandler:
    """A handler for /inference.GRPCInferenceService/ModelConfig only, to add to a server
    after the peer's own servicer (gRPC asks the handlers in order)."""
    answer = model_config_response(name, sess)

    async def model_config(request: bytes, context) -> bytes:  # both peers run grpc.aio
        return answer

    method = grpc.unary_unary_rpc_method_handler(
        model_config, request_deserializer=None, response_serializer=None)
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelConfig": method})
