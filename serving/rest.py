"""TF Serving's REST API (g3doc/api_rest.md) on a small asyncio HTTP/1.1 server.

    GET  /v1/models                                        every model (zoo extension)
    GET  /v1/models/NAME[/versions/N|/labels/L]            model status
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/N|/labels/L]:predict    {"instances": ...} or {"inputs": ...}
    GET  /monitoring/prometheus/metrics                    Prometheus text format

Errors are `{"error": "..."}` with the HTTP code TF Serving maps each gRPC status to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving.manager import Manager, ServingError, invalid

log = logging.getLogger("serving.rest")

HTTP_CODES = {  # TF Serving's ToHTTPStatusCode
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
           413: "Payload Too Large", 429: "Too Many Requests", 499: "Client Closed Request",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           504: "Gateway Timeout"}
MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict|:classify|:regress)?$")


def status_json(response) -> dict:
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                   preserving_proto_field_name=True)


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RestServer:
    def __init__(self, manager: Manager, max_body_bytes: int = 64 << 20, peers=None):
        self.manager, self.peers = manager, peers  # peers: sibling workers (workers.Peers)
        self.max_body_bytes = max_body_bytes
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        self._server = await asyncio.start_server(self._connection, host, port,
                                                  limit=1 << 16, reuse_port=reuse_port or None)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish (up to `grace` s), close connections."""
        if self._server is None:
            return
        self._server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            pass
        for w in list(self._connections):
            w.close()

    # ------------------------------------------------------------------ HTTP plumbing
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._connections.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, ConnectionError):
                    return
                if not line:
                    return
                try:
                    method, target, version = line.decode("latin-1").split()
                except ValueError:
                    await self._send(writer, 400, {"error": "Malformed HTTP request line"}, False)
                    return
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                keep = (version == "HTTP/1.1" and headers.get("connection", "").lower() != "close")
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._send(writer, 411, {"error": "Chunked request bodies are not "
                                                   "supported; send Content-Length"}, False)
                    return
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    length = -1
                if length < 0:
                    await self._send(writer, 400, {"error": "Invalid Content-Length"}, False)
                    return
                if length > self.max_body_bytes:
                    await self._send(writer, 413, {"error": f"Request body of {length} bytes "
                                                   f"exceeds the limit of {self.max_body_bytes} "
                                                   "bytes (--max_request_bytes)"}, False)
                    return
                body = await reader.readexactly(length) if length else b""
                self.inflight += 1
                self._idle.clear()
                try:
                    status, payload = await self.dispatch(method, target, headers, body)
                finally:
                    self.inflight -= 1
                    if self.inflight == 0:
                        self._idle.set()
                closing = self._server is None or not self._server.is_serving()
                await self._send(writer, status, payload, keep and not closing)
                if not keep or closing:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()

    @staticmethod
    async def _send(writer, status: int, payload, keep: bool) -> None:
        if isinstance(payload, str):
            body, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n")
        writer.write(head.encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass

    # ------------------------------------------------------------------ routes
    async def metrics_text(self) -> str:
        return self.manager.metrics.render()  # every worker's sums in a --workers server

    async def dispatch(self, method: str, target: str, headers: dict, body: bytes):
        path = target.split("?", 1)[0]
        try:
            if method == "GET" and path == "/monitoring/prometheus/metrics":
                return 200, await self.metrics_text()
            if method == "GET" and path in ("/v1/models", "/v1/models/"):
                return 200, self.list_models()
            m = MODEL_PATH.match(path)
            if m is None:
                raise HttpError(404, f"Malformed request: {method} {path}")
            spec = self._spec(m)
            tail = m.group("tail")
            if method == "GET" and tail is None:
                req = get_model_status_pb2.GetModelStatusRequest()
                req.model_spec.CopyFrom(spec)
                return 200, status_json(self.manager.model_status(req))
            if method == "GET" and tail == "/metadata":
                return 200, self.metadata(spec)
            if method == "POST" and tail == ":predict":
                with self.manager.metrics.track(spec.name, "predict", "REST", "INTERNAL"):
                    return 200, await self.predict(spec, headers, body)
            if method == "POST" and tail in (":classify", ":regress"):
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, _UNIMPLEMENTED[tail[1:]])
            raise HttpError(404, f"Malformed request: {method} {path}")
        except HttpError as e:
            return e.status, {"error": e.message}
        except ServingError as e:
            return HTTP_CODES.get(e.code, 500), {"error": e.message}
        except Exception as e:  # noqa: BLE001 - answer, log, keep serving
            log.exception("REST %s %s failed", method, path)
            return 500, {"error": f"Internal error: {type(e).__name__}: {e}"}

    @staticmethod
    def _spec(m) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=m.group("name"))
        if m.group("version") is not None:
            if not m.group("version").isdigit():
                raise HttpError(404, f"Malformed request: version {m.group('version')!r} is not "
                                "a number")
            spec.version.value = int(m.group("version"))
        elif m.group("label") is not None:
            spec.version_label = m.group("label")
        return spec

    def list_models(self) -> dict:
        models = []
        for name in self.manager.model_names():
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = name
            try:
                status = status_json(self.manager.model_status(req))
            except ServingError:
                status = {"model_version_status": []}
            models.append({"name": name, **status})
        return {"models": models}

    def metadata(self, spec) -> dict:
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.CopyFrom(spec)
        response = self.manager.model_metadata(req)
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        return {
            "model_spec": {"name": response.model_spec.name, "signature_name": "",
                           "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(
                sigmap, preserving_proto_field_name=True)},
        }

    async def predict(self, spec, headers: dict, body: bytes) -> dict:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            ctype = headers.get("content-type", "")
            hint = (f" (Content-Type was {ctype!r}; the body must be JSON)"
                    if ctype and "json" not in ctype else "")
            raise invalid(f"JSON Parse error: {e}{hint}") from None
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
        loaded = self.manager.resolve(request.model_spec)
        try:
            sig, _, _ = self._signature(loaded, request)
        finally:
            loaded.release()
        row = "instances" in doc
        arrays = self._decode(sig, doc["instances"] if row else doc["inputs"], row)
        _, result, _ = await self.manager.predict(request, api="rest", arrays=arrays)
        if row:
            if len(result) == 1:
                (value,) = result.values()
                return {"predictions": value.tolist()}
            lists = {k: v.tolist() for k, v in result.items()}
            n = len(next(iter(lists.values())))
            return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(n)]}
        if len(result) == 1:
            return {"outputs": next(iter(result.values())).tolist()}
        return {"outputs": {k: v.tolist() for k, v in result.items()}}

    @staticmethod
    def _signature(loaded, request):
        sig_name = request.model_spec.signature_name or "serving_default"
        if sig_name not in loaded.signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{sig_name}\" not found.")
        return loaded.signatures[sig_name], None, None

    @staticmethod
    def _decode(sig, value, row: bool) -> dict[str, np.ndarray]:
        names = list(sig.inputs)

        def array(name, v):
            if name not in sig.inputs:  # reported by Manager.prepare with the full signature
                return np.zeros(0)
            try:
                return np.asarray(v, dtype=sig.inputs[name].np_dtype)
            except (ValueError, TypeError) as e:
                raise invalid(f"input \"{name}\": cannot convert JSON value to "
                              f"{sig.inputs[name].describe()} ({e}); rows must be "
                              "rectangular lists of numbers") from None

        if row:
            if not isinstance(value, list):
                raise invalid("\"instances\" must be a JSON list, one element per example")
            if value and all(isinstance(v, dict) for v in value):
                keys = set(value[0])
                if any(set(v) != keys for v in value):
                    raise invalid("every instance must name the same inputs")
                return {k: array(k, [v[k] for v in value]) for k in keys}
            if any(isinstance(v, dict) for v in value):
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


_UNIMPLEMENTED = {
    "classify": "Classify needs a signature with method tensorflow/serving/classify taking "
                "serialized tf.Example protos; zoo models export only predict signatures on "
                "float tensors. Use Predict (:predict), which returns probabilities and classes.",
    "regress": "Regress needs a signature with method tensorflow/serving/regress taking "
               "serialized tf.Example protos; zoo models export only predict signatures on "
               "float tensors. Use Predict (:predict), which returns y.",
    "multi_inference": "MultiInference combines Classify and Regress signatures on tf.Example "
                       "input; zoo models export only predict signatures. Use Predict.",
}
