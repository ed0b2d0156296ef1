"""TensorFlow Serving's data plane over the core, shared by its gRPC services and REST handlers:
Predict (TF Serving's predict_util: check, run, answer), and what GetModelStatus and
GetModelMetadata say about the served versions (its get_model_status and get_model_metadata
handlers), as protos; REST renders the same protos."""

from __future__ import annotations

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from serving.core.errors import invalid, not_found
from serving.core.lifecycle import LoadedVersion
from serving.core.server_core import ServerCore
from serving.runtime import tensors

State = get_model_status_pb2.ModelVersionStatus.State


async def predict(core: ServerCore, request: predict_pb2.PredictRequest, api: str = "grpc",
                  arrays: dict[str, np.ndarray] | None = None
                  ) -> tuple[predict_pb2.PredictResponse | None, dict, LoadedVersion | None]:
    """Run a PredictRequest. Returns (response proto, output arrays, version).
    The request is counted in the metrics by its API (gRPC or REST), not here."""
    with core.serve(request.model_spec) as loaded:
        sig, inputs, outputs = core.check(loaded, request, arrays)
        result = await core.run(loaded, sig, inputs, outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = sig.name
        if api == "grpc":
            for k, v in result.items():
                tensors.to_proto(v, response.outputs[k])
    return response, result, loaded


def model_status(core: ServerCore, request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    """The status of the versions `request` names."""
    spec = request.model_spec
    if not spec.name:
        raise invalid("Missing ModelSpec")
    status = core.status(spec.name)
    if not status:
        raise not_found(f"Could not find any versions of model {spec.name}")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        versions = [core.label_version(spec.name, spec.version_label)]
    elif choice == "version":
        versions = [spec.version.value]
    else:
        versions = sorted(status, reverse=True)
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in versions:
        if v not in status:
            raise not_found(f"Could not find version {v} of model {spec.name}")
        st, message = status[v]
        s = response.model_version_status.add(version=v, state=st)
        s.status.SetInParent()
        if message:
            # A failed load is UNKNOWN, as TF Serving reports it; an available version's
            # message is a warning and keeps code OK.
            s.status.error_code = 0 if st == State.AVAILABLE else 2
            s.status.error_message = message
    return response


# The trailing metadata of GetModelStatus naming the plane that answers each available version's
# gRPC Predict (a zoo extension: TF Serving's status proto has no field for it), one value a
# version: "1 native", or "2 python: why" (docs/ARCHITECTURE.md, "The native data plane").
DATA_PLANE_METADATA = "zoo-data-plane"


def data_planes(core: ServerCore, name: str, versions=None) -> dict[int, tuple[str, str]]:
    """version -> (plane, why) for the available versions of a model (of `versions` if
    given)."""
    return {v: core.data_plane(name, v) for v in core.available(name)
            if versions is None or v in versions}


def data_plane_metadata(core: ServerCore, name: str, response) -> tuple[tuple[str, str], ...]:
    """DATA_PLANE_METADATA for the versions of a GetModelStatusResponse (printable ASCII, as
    gRPC metadata values must be)."""
    planes = data_planes(core, name, {s.version for s in response.model_version_status})
    return tuple((DATA_PLANE_METADATA, "".join(
        c if " " <= c <= "~" else "?" for c in f"{v} {plane}" + (f": {why}" if why else "")))
        for v, (plane, why) in sorted(planes.items()))


def model_metadata(core: ServerCore, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The signature_def metadata of the version `request` names."""
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise invalid(f"Metadata field {field} is not supported")
    loaded = core.resolve(request.model_spec)
    try:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        for k, v in loaded.backend.signature_defs.items():
            sigmap.signature_def[k].CopyFrom(v)
        response.metadata["signature_def"].Pack(sigmap)
        return response
    finally:
        loaded.release()
