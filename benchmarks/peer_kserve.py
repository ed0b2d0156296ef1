"""KServe's Python model server serving one ONNX file with ONNX Runtime, for benchmarks/peers.py.

Runs in KServe's own venv (benchmarks/peers.py makes it), never in the project's:
    python benchmarks/peer_kserve.py --model_dir DIR --model_name NAME --grpc_port P \
        --http_port Q [KServe's own ModelServer flags]
DIR holds model.onnx. kserve ships no ONNX runtime, so this is a custom kserve.Model as KServe's
docs show: inputs read with InferInput.as_numpy(), outputs returned as binary (raw) tensors, the
way KServe answers v2 over gRPC; metadata from the ONNX graph. Triton's ModelConfig RPC, which
perf_analyzer needs and KServe lacks, is added beside KServe's servicer (benchmarks/peer_onnx.py).
"""

from __future__ import annotations

import argparse
import os

import kserve
import numpy as np
import peer_onnx
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.utils.numpy_codec import from_np_dtype


class OnnxModel(Model):
    def __init__(self, name: str, path: str, threads: int, spinning: bool):
        super().__init__(name)
        self.path, self.threads, self.spinning = path, threads, spinning
        self.load()

    def load(self) -> bool:
        self.session = peer_onnx.session(self.path, self.threads, self.spinning)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def get_input_types(self) -> list[dict]:
        return peer_onnx.io_types(self.session.get_inputs())

    def get_output_types(self) -> list[dict]:
        return peer_onnx.io_types(self.session.get_outputs())

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        outputs = []
        for name, value in zip(self.output_names, self.session.run(self.output_names, feeds)):
            value = np.ascontiguousarray(value)
            out = InferOutput(name=name, shape=list(value.shape),
                              datatype=from_np_dtype(value.dtype))
            out.set_data_from_numpy(value, binary_data=True)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=outputs, use_binary_outputs=True)


def add_model_config(model: OnnxModel) -> None:
    """KServe's gRPC server registers its servicer through this module function when it starts
    (also in a forked gRPC process); the ModelConfig handler is added right after it."""
    register = grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server

    def register_with_config(servicer, server):
        register(servicer, server)
        server.add_generic_rpc_handlers((peer_onnx.model_config_handler(model.name,
                                                                        model.session),))

    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server = register_with_config


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--intra_op_threads", type=int, default=0)  # ONNX Runtime's choice
    parser.add_argument("--no_spinning", action="store_true", help="ORT threads sleep when idle")
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, os.path.join(args.model_dir, "model.onnx"),
                      args.intra_op_threads, not args.no_spinning)
    add_model_config(model)
    ModelServer().start([model])
