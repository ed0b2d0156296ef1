"""TensorFlow Serving's REST API (g3doc/api_rest.md): the /v1 rows of serving.server.ROUTES and
their handlers, over the core.

    GET  /v1/models                                        every model (zoo extension), with
                                                           its labels and each version's plane
    GET  /v1/models/NAME[/versions/N|/labels/L]            model status
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/N|/labels/L]:predict    {"instances": ...} or {"inputs": ...}
    GET  /v1/models/NAME[/versions/N|/labels/L]/certificate  metadata.json, class names (zoo)
    POST /v1/models/NAME[/versions/N|/labels/L]:classify, :regress   UNIMPLEMENTED, saying why
"""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving.core import validation
from serving.core.errors import ServingError, invalid, not_found
from serving.core.model_spec import BadVersion, model_spec
from serving.core.server_core import ServerCore
from serving.protocols.tf_serving import dataplane
from serving.protocols.tf_serving.unimplemented import UNIMPLEMENTED
from serving.repository import certificate, versions
from serving.transports import json_body
from serving.transports.http_server import HttpError, Route

OWNER = "tf_serving"  # the key of TfServingRest among the REST server's handlers
ALIASES = {"/v1/models/": "/v1/models"}


def _model_routes(method: str, tail: str, name: str) -> list[Route]:
    """TF Serving's three ways of naming a model's version: latest, number, label."""
    return [Route(method, f"/v1/models/{{name}}{middle}{tail}", OWNER, name)
            for middle in ("", "/versions/{version}", "/labels/{label}")]


ROUTES: list[Route] = [
    Route("GET", "/v1/models", OWNER, "get_models"),
    *_model_routes("POST", ":predict", "post_predict"),
    *_model_routes("GET", "", "get_status"),
    *_model_routes("GET", "/metadata", "get_metadata"),
    *_model_routes("GET", "/certificate", "get_certificate"),  # zoo extension
    *_model_routes("POST", ":classify", "post_classify"),
    *_model_routes("POST", ":regress", "post_regress"),
]


def status_json(response) -> dict:
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)



def encode_predict(result: dict[str, np.ndarray], row: bool) -> bytes:
    """TF Serving's predict answer: {"predictions": [...]} (row format, one entry per example,
    an object of the outputs when there are several) or {"outputs": ...} (columnar), joined in
    one copy (each copy of a 300 MB answer holds the GIL for 0.3 s)."""
    pieces = [b'{"predictions": ' if row else b'{"outputs": ']
    if len(result) == 1:
        pieces += json_body.json_array(next(iter(result.values())))
    elif row:
        names, arrays = list(result), list(result.values())
        pieces += json_body.json_list(len(arrays[0]), sum(a[0].size for a in arrays if len(a)),
                             lambda i, j: [dict(zip(names, values)) for values in
                                           zip(*(a[i:j].tolist() for a in arrays))])
    else:
        for k, (name, a) in enumerate(result.items()):
            pieces += [b", " if k else b"{", json.dumps(name).encode(), b": ",
                       *json_body.json_array(a)]
        pieces.append(b"}")
    return b"".join([*pieces, b"}"])



class TfServingRest:
    """The handlers of ROUTES: (path parameters, headers, body) -> (HTTP status, payload)."""

    def __init__(self, core: ServerCore):
        self.core = core

    async def get_models(self, params, headers, body):
        return 200, self.list_models()

    async def get_status(self, params, headers, body):
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.CopyFrom(self._spec(params))
        return 200, status_json(dataplane.model_status(self.core, req))

    async def get_metadata(self, params, headers, body):
        return 200, self.metadata(self._spec(params))

    async def post_predict(self, params, headers, body):
        spec = self._spec(params)
        with self.core.metrics.track(spec.name, "predict", "REST", "INTERNAL"):
            return 200, await self.predict(spec, headers, body)

    async def get_certificate(self, params, headers, body):
        return 200, await served_certificate(self.core, self._spec(params))

    async def post_classify(self, params, headers, body):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED["classify"])

    async def post_regress(self, params, headers, body):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED["regress"])

    @staticmethod
    def _spec(params: dict[str, str]) -> model_pb2.ModelSpec:
        try:
            return model_spec(params["name"], params.get("version"), params.get("label"))
        except BadVersion as e:
            if not e.number:
                raise HttpError(404, f"Malformed request: version {e.text!r} is not a "
                                     "number") from None
            raise invalid(f"version {e.text} is out of range (at most "
                          f"{versions.MAX_VERSION})") from None

    def list_models(self) -> dict:
        models = []
        for name in self.core.model_names():
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = name
            try:
                status = status_json(dataplane.model_status(self.core, req))
            except ServingError:
                status = {"model_version_status": []}
            labels = self.core.labels(name)  # the page shows them beside versions
            planes = dataplane.data_planes(self.core, name)  # and which plane answers each
            models.append({"name": name, **status,
                           "version_labels": {k: str(v) for k, v in sorted(labels.items())},
                           "data_planes": {str(v): {"plane": plane, "reason": why}
                                           for v, (plane, why) in sorted(planes.items())}})
        return {"models": models}

    def metadata(self, spec) -> dict:
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.CopyFrom(spec)
        response = dataplane.model_metadata(self.core, req)
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        return {
            "model_spec": {"name": response.model_spec.name, "signature_name": "",
                           "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(
                sigmap, preserving_proto_field_name=True)},
        }

    async def predict(self, spec, headers, body: bytes) -> bytes:
        doc = await json_body.off_the_loop(len(body), json_body.parse, body,
                                           headers.get("Content-Type", ""))
        if not isinstance(doc, dict):
            raise invalid("Request body must be a JSON object with \"instances\" or \"inputs\"")
        if ("instances" in doc) == ("inputs" in doc):
            raise invalid("Request must have exactly one of \"instances\" (row format) or "
                          "\"inputs\" (columnar format)")
        unknown = set(doc) - {"instances", "inputs", "signature_name"}
        if unknown:
            raise invalid(f"Unknown field(s) in request: {', '.join(sorted(unknown))}")
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(spec)
        signature_name = doc.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid("\"signature_name\" must be a string")
        request.model_spec.signature_name = signature_name
        loaded = self.core.resolve(request.model_spec)
        try:
            sig = validation.signature(loaded.name, loaded.version, loaded.signatures,
                                       signature_name)
        finally:
            loaded.release()
        row = "instances" in doc
        arrays = await json_body.off_the_loop(len(body), self._decode, sig,
                                    doc["instances"] if row else doc["inputs"], row)
        _, result, _ = await dataplane.predict(self.core, request, api="rest", arrays=arrays)
        return await json_body.off_the_loop(sum(a.nbytes for a in result.values()), encode_predict,
                                  result, row)

    @staticmethod
    def _decode(sig, value, row: bool) -> dict[str, np.ndarray]:
        names = list(sig.inputs)

        def array(name, v):
            if name not in sig.inputs:  # reported by ServerCore.check with the full signature
                return np.zeros(0)
            try:
                return json_body.to_array(v, sig.inputs[name].np_dtype)
            except (ValueError, TypeError, OverflowError, RecursionError) as e:
                raise invalid(f"input \"{name}\": cannot convert JSON value to "
                              f"{sig.inputs[name].describe()} ({e}); rows must be "
                              "rectangular lists of numbers") from None

        if row:
            numbers = isinstance(value, json_body.NumberArray)  # rows of numbers, undecoded
            if not numbers and not isinstance(value, list):
                raise invalid("\"instances\" must be a JSON list, one element per example")
            if not numbers and value and all(isinstance(v, dict) for v in value):
                keys = set(value[0])
                if any(set(v) != keys for v in value):
                    raise invalid("every instance must name the same inputs")
                return {k: array(k, [v[k] for v in value]) for k in keys}
            if not numbers and any(isinstance(v, dict) for v in value):
                raise invalid("instances mix objects and plain values")
            if len(names) != 1:
                raise invalid(f"signature has {len(names)} inputs ({', '.join(names)}); each "
                              "instance must be an object naming them")
            if not value:
                shape = [0, *[max(d, 0) for d in sig.inputs[names[0]].shape[1:]]]
                return {names[0]: np.zeros(shape, sig.inputs[names[0]].np_dtype)}
            return {names[0]: array(names[0], value)}
        if isinstance(value, dict):
            return {k: array(k, v) for k, v in value.items()}
        if len(names) != 1:
            raise invalid(f"signature has {len(names)} inputs ({', '.join(names)}); \"inputs\" "
                          "must be an object naming them")
        return {names[0]: array(names[0], value)}


async def served_certificate(core: ServerCore, spec) -> dict:
    """{"model_spec": {name, version}, "class_names", "certificate": metadata.json} of the version
    `spec` names
    (latest, a number or a label, resolved as Predict resolves it). The version was verified
    against this certificate when it was loaded (serving/repository/certificate.py); it is read
    again here, off the event loop, so that the answer is the file as it is."""
    loaded = core.resolve(spec)
    try:
        doc = await asyncio.to_thread(certificate.read, loaded.path)
    except certificate.CertificateError as e:  # changed on disk since it was loaded
        raise ServingError(grpc.StatusCode.DATA_LOSS, str(e)) from None
    finally:
        loaded.release()
    if doc is None:
        raise not_found(f"version {loaded.version} of model {loaded.name} has no certificate "
                        f"({certificate.FILENAME}): it was exported by another tool")
    # The server answers class ids; these name them (null: a regressor, or no names given).
    names = (doc.get("data") or {}).get("class_names") if isinstance(doc, dict) else None
    return {"model_spec": {"name": loaded.name, "version": str(loaded.version)},
            "class_names": names, "certificate": doc}
