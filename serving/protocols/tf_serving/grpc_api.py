"""TensorFlow Serving's gRPC services over the core: PredictionService (Predict,
GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED, saying why) and
ModelService (GetModelStatus, HandleReloadConfigRequest, which a --workers server applies in
every worker before it answers)."""

from __future__ import annotations

import asyncio

import grpc
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving import siblings
from serving.core.errors import ServingError
from serving.core.server_core import ServerCore
from serving.protocols.tf_serving import dataplane
from serving.protocols.tf_serving.unimplemented import UNIMPLEMENTED


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    async def Predict(self, request, context):
        try:
            with self.core.metrics.track(request.model_spec.name, "Predict", "GRPC"):
                response, _, _ = await dataplane.predict(self.core, request)
            return response
        except ServingError as e:
            await context.abort(e.code, e.message)

    async def GetModelMetadata(self, request, context):
        try:
            return dataplane.model_metadata(self.core, request)
        except ServingError as e:
            await context.abort(e.code, e.message)

    async def Classify(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED["classify"])

    async def Regress(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED["regress"])

    async def MultiInference(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED["multi_inference"])


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore, peers: siblings.Peers | None = None):
        self.core, self.peers = core, peers

    async def GetModelStatus(self, request, context):
        try:
            response = dataplane.model_status(self.core, request)
        except ServingError as e:
            await context.abort(e.code, e.message)
        context.set_trailing_metadata(dataplane.data_plane_metadata(
            self.core, request.model_spec.name, response))
        return response

    async def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        # In a --workers server every worker applies the reload before anyone answers.
        forward = self.peers is not None and not self.peers.is_peer(context)
        local, *others = await asyncio.gather(
            self._reload_here(request.config),
            *([self.peers.reload(request)] if forward else []))
        failures = [] if local is None else [(None, *local)]
        if others:
            failures += others[0]  # (worker, code, message) from each sibling that failed
        if failures:
            who, code, message = failures[0]
            if who is not None:
                message = f"worker {who}: {message}"
            response.status.error_code = code.value[0]
            response.status.error_message = message
            context.set_code(code)
            context.set_details(message)
        return response

    async def _reload_here(self, config) -> tuple[grpc.StatusCode, str] | None:
        try:
            await self.core.reload(config)
        except ServingError as e:
            return e.code, e.message
        if self.peers is not None:  # where a restarted worker starts from
            self.peers.record(config)
        return None


def add_to_server(core: ServerCore, server: grpc.aio.Server,
                  peers: siblings.Peers | None = None) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, peers),
                                                              server)
