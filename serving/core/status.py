"""What GetModelStatus and GetModelMetadata say about the served versions (TF Serving's
get_model_status and get_model_metadata handlers), as protos; REST renders the same protos."""

from __future__ import annotations

from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.core.errors import invalid, not_found

State = get_model_status_pb2.ModelVersionStatus.State


def model_status(models: dict, request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    """The status of the versions `request` names, from the lifecycle's `models`."""
    spec = request.model_spec
    if not spec.name:
        raise invalid("Missing ModelSpec")
    state = models.get(spec.name)
    if state is None or not state.status:
        raise not_found(f"Could not find any versions of model {spec.name}")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        if spec.version_label not in state.config.version_labels:
            raise invalid(f"Unrecognized servable version label: {spec.version_label}")
        versions = [state.config.version_labels[spec.version_label]]
    elif choice == "version":
        versions = [spec.version.value]
    else:
        versions = sorted(state.status, reverse=True)
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in versions:
        if v not in state.status:
            raise not_found(f"Could not find version {v} of model {spec.name}")
        st, message = state.status[v]
        s = response.model_version_status.add(version=v, state=st)
        s.status.SetInParent()
        if message:
            # A failed load is UNKNOWN, as TF Serving reports it; an available version's
            # message is a warning and keeps code OK.
            s.status.error_code = 0 if st == State.AVAILABLE else 2
            s.status.error_message = message
    return response


def model_metadata(resolve, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The signature_def metadata of the version `request` names; `resolve(spec)` finds it
    (acquired; released here)."""
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise invalid(f"Metadata field {field} is not supported")
    loaded = resolve(request.model_spec)
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
