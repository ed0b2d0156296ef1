"""`inference.GRPCInferenceService`, the Open Inference Protocol's gRPC service, on the same
server and port as TF Serving's services (docs/ARCHITECTURE.md, "Open Inference Protocol").

The proto is the one tritonclient ships (`tritonclient.grpc.service_pb2`, built from Triton's
grpc_service.proto: KServe's grpc_predict_v2.proto plus Triton's extensions). Implemented:
ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and Triton's
ModelConfig (what perf_analyzer's triton kind asks first), ModelStatistics and RepositoryIndex;
every other RPC of the service answers UNIMPLEMENTED, naming the ones that are.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from serving.core.errors import ServingError, invalid
from serving.protocols.open_inference import tensors as v2_tensors
from serving.protocols.open_inference.dataplane import DataPlane, WireInput

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
IMPLEMENTED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
               "ModelInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex")


def _unimplemented(method: str):
    message = (f"{SERVICE.full_name}/{method} is not implemented by this server; it implements "
               f"{', '.join(IMPLEMENTED)}")

    async def rpc(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
    return rpc


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.metrics = plane.core.metrics

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def ModelMetadata(self, request, context):
        try:
            m = self.plane.model_metadata(request.name, request.version)
        except ServingError as e:
            await context.abort(e.code, e.message)
        return pb.ModelMetadataResponse(
            name=m["name"], versions=m["versions"], platform=m["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in m["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in m["outputs"]])

    async def ModelConfig(self, request, context):
        try:
            config = self.plane.model_config(request.name, request.version)
        except ServingError as e:
            await context.abort(e.code, e.message)
        return pb.ModelConfigResponse(
            config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelStatistics(self, request, context):
        await self.metrics.refresh()  # the native plane's answers first (serving/native)
        try:
            stats = self.plane.model_statistics(request.name, request.version)
        except ServingError as e:
            await context.abort(e.code, e.message)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        if request.repository_name:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no repository named \"{request.repository_name}\": this "
                                "server has one, unnamed (give no repository_name)")
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(**m)
            for m in self.plane.repository_index(request.ready)])

    async def ModelInfer(self, request, context):
        async def encode(result) -> pb.ModelInferResponse:
            outputs = result.outputs.items()
            return pb.ModelInferResponse(
                model_name=result.model, model_version=str(result.version), id=request.id,
                outputs=[pb.ModelInferResponse.InferOutputTensor(
                    name=k, datatype=v2_tensors.OF_NUMPY[a.dtype], shape=a.shape)
                    for k, a in outputs],
                raw_output_contents=[a.tobytes() for _, a in outputs])

        try:
            with self.metrics.track(request.model_name, "ModelInfer", "GRPC"):
                return await self.plane.infer(request.model_name, request.model_version,
                                              wire_inputs(request), requested(request), encode)
        except ServingError as e:
            await context.abort(e.code, e.message)


for _method in SERVICE.methods_by_name:
    if _method not in IMPLEMENTED:
        setattr(InferenceService, _method, _unimplemented(_method))


def wire_inputs(request: pb.ModelInferRequest) -> list[WireInput]:
    """The request's inputs, each decoded from raw_input_contents (all inputs or none carry
    raw content, as in Triton) or from its typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} "
                      "inputs; give one per input, in order, or none")
    out = []
    for i, t in enumerate(request.inputs):
        shape = tuple(t.shape)  # int64s: only their sign needs checking
        if shape and min(shape) < 0:
            v2_tensors.shape_of(t.name, shape)  # raises, naming the input
        v2_tensors.check_datatype(t.name, t.datatype)
        if raw:
            if t.HasField("contents"):
                raise invalid(f"input \"{t.name}\" has both contents and raw_input_contents")
            out.append(WireInput(t.name, t.datatype, shape,
                                 lambda t=t, s=shape, b=raw[i]:
                                     v2_tensors.from_raw(t.name, t.datatype, s, b)))
        else:
            out.append(WireInput(t.name, t.datatype, shape,
                                 lambda t=t, s=shape:
                                     v2_tensors.from_contents(t.name, t.datatype, s, t.contents)))
    return out


def requested(request: pb.ModelInferRequest) -> list[str]:
    for o in request.outputs:
        v2_tensors.refuse_classification(o.name, o.parameters)
    return [o.name for o in request.outputs]


def add_to_server(plane: DataPlane, server: grpc.aio.Server) -> str:
    """Add the service; returns its full name (for health and reflection)."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(plane), server)
    return SERVICE.full_name
