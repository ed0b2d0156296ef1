"""MLServer serving one ONNX file with ONNX Runtime, for benchmarks/peers.py.

Runs in MLServer's own venv (benchmarks/peers.py makes it), never in the project's:
    python benchmarks/peer_mlserver.py --model_dir DIR --model_name NAME --grpc_port P \
        --http_port Q --metrics_port R --parallel_workers N --repository TMP
DIR holds model.onnx. There is no MLServer ONNX runtime package, so this is a custom runtime
(an mlserver.MLModel, as MLServer's docs show) with NumpyCodec for inputs and outputs; the
launcher writes settings.json and model-settings.json (metadata from the ONNX graph) into TMP and
starts `mlserver start TMP`. Triton's ModelConfig RPC, which perf_analyzer needs and MLServer
lacks, is added beside MLServer's servicer (benchmarks/peer_onnx.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import peer_onnx
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        threads = int(self.settings.parameters.extra.get("intra_op_threads", 0))
        self.session = peer_onnx.session(self.settings.parameters.uri, threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        values = self.session.run(self.output_names, feeds)
        return InferenceResponse(
            model_name=self.name, id=payload.id,
            outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self.output_names, values)])


def write_repository(args) -> None:
    onnx = os.path.abspath(os.path.join(args.model_dir, "model.onnx"))
    sess = peer_onnx.session(onnx, 1)
    repo = Path(args.repository)
    (repo / args.model_name).mkdir(parents=True, exist_ok=True)
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": args.http_port, "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port, "parallel_workers": args.parallel_workers,
        "debug": False}))
    (repo / args.model_name / "model-settings.json").write_text(json.dumps({
        "name": args.model_name, "implementation": "peer_mlserver.OnnxRuntime",
        "inputs": peer_onnx.io_types(sess.get_inputs()),
        "outputs": peer_onnx.io_types(sess.get_outputs()),
        "parameters": {"uri": onnx, "extra": {"intra_op_threads": args.intra_op_threads}}}))
    return sess


def add_model_config(name: str, sess) -> None:
    """MLServer's gRPC server registers its servicer through this name when it starts; the
    ModelConfig handler is added right after it."""
    from mlserver.grpc import server as grpc_server

    register = grpc_server.add_GRPCInferenceServiceServicer_to_server

    def register_with_config(servicer, server):
        register(servicer, server)
        server.add_generic_rpc_handlers((peer_onnx.model_config_handler(name, sess),))

    grpc_server.add_GRPCInferenceServiceServicer_to_server = register_with_config


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--model_dir", "--model_name", "--repository"):
        parser.add_argument(flag, required=True)
    for flag in ("--grpc_port", "--http_port", "--metrics_port"):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--parallel_workers", type=int, default=1)  # MLServer's default
    parser.add_argument("--intra_op_threads", type=int, default=0)  # ONNX Runtime's choice
    args = parser.parse_args()
    add_model_config(args.model_name, write_repository(args))
    from mlserver.cli.main import main

    sys.argv = ["mlserver", "start", args.repository]
    main()
