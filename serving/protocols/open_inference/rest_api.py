"""The Open Inference Protocol's REST API on the TF Serving REST port (docs/ARCHITECTURE.md,
"Open Inference Protocol"): the /v2 rows of serving.server.ROUTES and their handlers.

    GET  /v2                                       server metadata
    GET  /v2/health/live, /v2/health/ready         200 when live / ready, else 400
    GET  /v2/models/NAME[/versions/V]              model metadata
    GET  /v2/models/NAME[/versions/V]/ready        200 when ready, else 400
    POST /v2/models/NAME[/versions/V]/infer        inference
    GET  /v2/models/NAME[/versions/V]/config       Triton's model configuration extension
    GET  /v2/models[/NAME[/versions/V]]/stats      Triton's statistics extension
    POST /v2/repository/index                      Triton's repository index (body optional)

An inference body is JSON, or, with an `Inference-Header-Content-Length` header, that many bytes
of JSON followed by the binary tensors of Triton's binary tensor extension: an input whose
parameters hold `binary_data_size` takes its bytes from there, in order. Outputs are binary when
asked for (`"binary_data": true` in a requested output's parameters, or `"binary_data_output":
true` in the request's when none is named), else JSON `data`. Errors are `{"error": "..."}` with
the HTTP status of their gRPC code (TF Serving's mapping). Bodies and answers beyond
serving.transports.json_body.THREAD_ABOVE_BYTES are parsed, decoded and encoded in a thread.
"""

from __future__ import annotations

import json

from aiohttp import web

from serving.core.errors import invalid
from serving.protocols.open_inference import tensors as v2_tensors
from serving.protocols.open_inference.dataplane import DataPlane, WireInput
from serving.transports import json_body
from serving.transports.http_server import Route

OWNER = "open_inference"  # the key of V2Rest among the REST server's handlers
ROUTES: list[Route] = [
    Route("GET", "/v2", OWNER, "server_metadata"),
    Route("GET", "/v2/health/live", OWNER, "live"),
    Route("GET", "/v2/health/ready", OWNER, "ready"),
    Route("GET", "/v2/models/stats", OWNER, "model_statistics"),  # before /v2/models/{name}
    *[Route(method, f"/v2/models/{{name}}{middle}{tail}", OWNER, handler)
      for middle in ("", "/versions/{version}")
      for method, tail, handler in (("GET", "", "model_metadata"),
                                    ("GET", "/ready", "model_ready"),
                                    ("POST", "/infer", "post_infer"),
                                    ("GET", "/config", "model_config"),
                                    ("GET", "/stats", "model_statistics"))],
    Route("POST", "/v2/repository/index", OWNER, "repository_index"),
]


class V2Rest:
    def __init__(self, plane: DataPlane):
        self.plane = plane

    # Handlers of ROUTES: (path parameters, headers, body) -> (HTTP status,
    # JSON value or a ready web.Response); a refused request raises ServingError.
    async def server_metadata(self, params, headers, body):
        return 200, self.plane.server_metadata()

    async def live(self, params, headers, body):
        return 200, {"live": True}

    async def ready(self, params, headers, body):
        ready = self.plane.ready()
        return (200 if ready else 400), {"ready": ready}

    async def model_metadata(self, params, headers, body):
        return 200, self.plane.model_metadata(params["name"], params.get("version") or "")

    async def model_ready(self, params, headers, body):
        ready = self.plane.model_ready(params["name"], params.get("version") or "")
        return (200 if ready else 400), {"name": params["name"], "ready": ready}

    async def model_config(self, params, headers, body):
        return 200, self.plane.model_config(params["name"], params.get("version") or "")

    async def model_statistics(self, params, headers, body):
        await self.plane.core.metrics.refresh()  # the native plane's answers first
        return 200, self.plane.model_statistics(params.get("name") or "",
                                                params.get("version") or "")

    async def repository_index(self, params, headers, body):
        doc = json_body.parse(body, headers.get("Content-Type", "")) if body.strip() else {}
        if not isinstance(doc, dict):
            raise invalid("the index request body must be a JSON object, e.g. {\"ready\": true}")
        return 200, self.plane.repository_index(_field(doc, "ready", bool, "index request",
                                                       False))

    async def post_infer(self, params, headers, body):
        name = params["name"]
        with self.plane.core.metrics.track(name, "infer", "REST", "INTERNAL"):
            return 200, await self.infer(name, params.get("version") or "", headers, body)

    async def infer(self, name: str, version: str, headers, body: bytes) -> web.Response:
        header_length = headers.getall(v2_tensors.INFERENCE_HEADER, [None])
        if len(header_length) > 1:
            raise invalid(f"{v2_tensors.INFERENCE_HEADER} was sent {len(header_length)} "
                          "times: send it once")
        header_length = header_length[0]
        binary = memoryview(b"")
        if header_length is not None:
            body, binary = v2_tensors.split_binary(body, header_length)
        doc = await json_body.off_the_loop(len(body), json_body.parse, body,
                                      headers.get("Content-Type", ""))
        inputs, requested, binary_out = parse_request(doc, binary)

        async def encode(result) -> web.Response:
            size = sum(a.nbytes for a in result.outputs.values())
            return await json_body.off_the_loop(size, encode_response, doc, result, requested,
                                                binary_out)

        return await self.plane.infer(name, version, inputs, list(requested), encode,
                                      decode_off_loop=len(body))  # binary: frombuffer


def _field(obj: dict, key: str, kind, what: str, default=None):
    value = obj.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise invalid(f"{what}: \"{key}\" must be a {getattr(kind, '__name__', kind)}, "
                      f"got {value!r}")
    return value


def parse_request(doc, binary: memoryview) -> tuple[list[WireInput], dict[str, bool], bool]:
    """(inputs, {requested output: binary?}, binary outputs by default) of a v2 JSON request;
    binary inputs take their bytes from `binary` in order."""
    if not isinstance(doc, dict):
        raise invalid("the request body must be a JSON object with \"inputs\"")
    params = _field(doc, "parameters", dict, "request", {})
    inputs, offset = [], 0
    for k, t in enumerate(_field(doc, "inputs", list, "request")):
        if not isinstance(t, dict):
            raise invalid(f"inputs[{k}] must be an object with name, shape, datatype and data")
        name = _field(t, "name", str, f"inputs[{k}]")
        what = f"input \"{name}\""
        datatype = _field(t, "datatype", str, what)
        v2_tensors.check_datatype(name, datatype)
        shape = v2_tensors.shape_of(name, t.get("shape"))
        size = _field(t, "parameters", dict, what, {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                    offset + size > len(binary):
                raise invalid(f"{what}: binary_data_size {size!r} does not fit the "
                              f"{len(binary) - offset} binary bytes left in the body")
            raw = binary[offset:offset + size]
            offset += size
            inputs.append(WireInput(name, datatype, shape,
                                    lambda n=name, d=datatype, s=shape, r=raw:
                                        v2_tensors.from_raw(n, d, s, r)))
        else:
            if "data" not in t:
                raise invalid(f"{what} has neither \"data\" nor a binary_data_size parameter")
            inputs.append(WireInput(name, datatype, shape,
                                    lambda n=name, d=datatype, s=shape, v=t["data"]:
                                        v2_tensors.from_json(n, d, s, v, json_body.to_array)))
    if offset != len(binary):
        raise invalid(f"the body holds {len(binary) - offset} binary bytes that no input's "
                      "binary_data_size accounts for")
    requested = {}
    for k, o in enumerate(_field(doc, "outputs", list, "request", [])):
        if not isinstance(o, dict):
            raise invalid(f"outputs[{k}] must be an object with a name")
        name = _field(o, "name", str, f"outputs[{k}]")
        o_params = _field(o, "parameters", dict, f"output \"{name}\"", {})
        v2_tensors.refuse_classification(name, o_params)
        if name in requested:
            raise invalid("an output is requested more than once")
        requested[name] = bool(o_params.get("binary_data", False))
    return inputs, requested, bool(params.get("binary_data_output", False))


def encode_response(doc: dict, result, requested: dict[str, bool],
                    binary_out: bool) -> web.Response:
    """The answer: JSON, or JSON then binary outputs with Inference-Header-Content-Length."""
    outputs, sections = [], []
    for name, array in result.outputs.items():
        out = {"name": name, "datatype": v2_tensors.OF_NUMPY[array.dtype],
               "shape": list(array.shape)}
        if requested.get(name, binary_out if not requested else False):
            data = array.tobytes()
            out["parameters"] = {"binary_data_size": len(data)}
            sections.append(data)
        else:
            out["data"] = v2_tensors.json_data(array)
        outputs.append(out)
    header = {"model_name": result.model, "model_version": str(result.version),
              "outputs": outputs}
    if isinstance(doc.get("id"), str):
        header["id"] = doc["id"]
    if not sections:
        return web.Response(body=json.dumps(header).encode(), content_type="application/json")
    body, length = v2_tensors.binary_body(header, sections)
    return web.Response(body=body, headers={v2_tensors.INFERENCE_HEADER: str(length),
                                            "Content-Type": "application/octet-stream"})

