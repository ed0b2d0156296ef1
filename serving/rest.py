"""TF Serving's REST API (g3doc/api_rest.md) on aiohttp.

    GET  /v1/models                                        every model (zoo extension)
    GET  /v1/models/NAME[/versions/N|/labels/L]            model status
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/N|/labels/L]:predict    {"instances": ...} or {"inputs": ...}
    GET  /monitoring/prometheus/metrics                    Prometheus text format
    GET  /v1/models/NAME[/versions/N|/labels/L]/certificate  metadata.json (zoo extension)
    GET  /openapi.json                                     the OpenAPI 3 document of the above
    GET  /  and /web/FILE                                  the web page (serving/webpage.py;
                                                           a page, not part of the API)

Every route is a row of ROUTES (method, OpenAPI path template, handler), the one routing table:
dispatch reads it, and tests/test_serving_ops.py checks it against serving/openapi.json. Each
request is logged (access_log) and authorized (auth) in `RestServer.handle`.

Errors are `{"error": "..."}` with the HTTP code TF Serving maps each gRPC status to. Paths are
percent-decoded (`/v1/models/mod%C3%A8le` names the model `modèle`).

Why aiohttp: it runs on the asyncio (uvloop) event loop that grpc.aio already runs on, so one
process serves both without a second loop or thread; its HTTP/1.1 parser (llhttp) has per-server
limits on header count and size and refuses what our own parser let through (`Content-Length:
1_0`, two Content-Lengths); it has a low-level server for callers who do their own routing; and
it is one pinned dependency (with its own small helpers: multidict, yarl, ...). We use that
low-level server (`web.Server`, `ServerRunner`, `TCPSite`) rather than `web.Application`: paths
go through our own table (TF Serving's `:predict` suffixes are not path segments), and the
protocol class must be ours to add what
aiohttp leaves to its caller: a deadline for each request head, a cap on connections, and a
lingering close after a request it cannot parse, so that the client reads the 400/431 instead
of a reset. The limits are flags (`add_flags`).

JSON work on a body or an answer of more than THREAD_ABOVE_BYTES runs in a thread, and in slices:
json.loads, np.asarray and json.dumps each hold the GIL for their whole call, so one call on a
50 MB body stalls the event loop (and every gRPC call on it) even from a thread: json.loads of
61 MB in a thread kept the loop waiting 1.03 s; loads_sliced at most 0.05 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import re
import resource
import threading
from collections.abc import Callable
from importlib import resources

import grpc
import numpy as np
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import LineTooLong
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving import access_log, auth, versions, webpage
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
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
THREAD_ABOVE_BYTES = 1 << 16     # bigger bodies and answers are (de)coded in a thread
SLICE_CHARS = 1 << 16            # JSON text parsed by one C call, about
SLICE_ELEMENTS = 1 << 13         # numbers converted or encoded by one C call, about
WALK_DEPTH = 4                   # JSON levels walked in Python when slicing a big body
LINGER_SECONDS = 2.0             # after an answer that closes, how long the client's rest is read
FD_RESERVE = 256                 # open files kept for everything but REST connections


# ---------------------------------------------------------------------------- options (flags)
@dataclasses.dataclass(frozen=True)
class RestOptions:
    """The REST server's flags, each field named as its flag (`add_flags` defines them)."""

    max_request_bytes: int = 64 << 20  # shared with gRPC; the server's own flag
    rest_api_max_connections: int = 1024
    rest_api_max_header_count: int = 100
    rest_api_max_header_bytes: int = 8190
    rest_api_read_timeout_seconds: float = 10.0
    rest_api_keepalive_timeout_seconds: float = 75.0
    rest_api_enable_cors_support: bool = False
    rest_api_cors_allowed_origins: str = "*"
    rest_api_web_page: bool = True

    @classmethod
    def from_args(cls, args) -> RestOptions:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.type in ("int", "float") and not getattr(self, f.name) > 0:
                raise ValueError(f"--{f.name} must be > 0, got {getattr(self, f.name)}")

    @property
    def cors_origins(self) -> tuple[str, ...] | None:
        """The origins CORS allows ("*": any), or None when CORS is off."""
        if not self.rest_api_enable_cors_support:
            return None
        return tuple(o.strip() for o in self.rest_api_cors_allowed_origins.split(",")
                     if o.strip()) or ("*",)


def add_flags(p: argparse.ArgumentParser, boolean) -> None:
    """The REST flags but --max_request_bytes (the server's: it limits gRPC messages too)."""
    d = RestOptions()
    g = p.add_argument_group("REST limits and CORS")
    g.add_argument("--rest_api_max_connections", type=int, default=d.rest_api_max_connections,
                   help="open REST connections at most; one more is answered 503 and closed at "
                        f"once (default {d.rest_api_max_connections}; lowered if the process "
                        "may not open that many files)")
    g.add_argument("--rest_api_max_header_count", type=int, default=d.rest_api_max_header_count,
                   help=f"header lines a request may have (default {d.rest_api_max_header_count})")
    g.add_argument("--rest_api_max_header_bytes", type=int, default=d.rest_api_max_header_bytes,
                   help="longest request line or header line, in bytes (default "
                        f"{d.rest_api_max_header_bytes}); beyond either limit the answer is 431")
    g.add_argument("--rest_api_read_timeout_seconds", type=float,
                   default=d.rest_api_read_timeout_seconds,
                   help="a request's line and headers must arrive within this time of the "
                        "connection opening or of the request's first byte, and its body may "
                        "not pause longer; a slower client is disconnected "
                        f"(default {d.rest_api_read_timeout_seconds:g})")
    g.add_argument("--rest_api_keepalive_timeout_seconds", type=float,
                   default=d.rest_api_keepalive_timeout_seconds,
                   help="an idle keep-alive connection is closed after this time (default "
                        f"{d.rest_api_keepalive_timeout_seconds:g}, above the 60 s idle timeout "
                        "of common load balancers)")
    g.add_argument("--rest_api_enable_cors_support", type=boolean, nargs="?", const=True,
                   default=d.rest_api_enable_cors_support,
                   help="answer CORS preflight requests and add CORS headers (TF Serving's "
                        "flag; default false)")
    g.add_argument("--rest_api_cors_allowed_origins", default=d.rest_api_cors_allowed_origins,
                   help="comma-separated origins CORS allows, or * for any (default "
                        f"{d.rest_api_cors_allowed_origins})")
    g.add_argument("--rest_api_web_page", type=boolean, nargs="?", const=True,
                   default=d.rest_api_web_page,
                   help="serve the web page for people at / (default true; false: / is 404)")


def connection_budget(wanted: int) -> int:
    """`wanted`, or fewer if the process may not open that many files beside FD_RESERVE; the
    soft limit is raised towards the hard one first, as far as needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft != resource.RLIM_INFINITY and soft < need:
        budget = max(1, soft - FD_RESERVE)
        log.warning("--rest_api_max_connections %d lowered to %d: the process may open only %d "
                    "files", wanted, budget, soft)
        return budget
    return wanted


# ---------------------------------------------------------------------------- JSON, in slices
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(s: str, i: int) -> int:
    return _SPACE.match(s, i).end()


_gc_lock, _gc_pauses = threading.Lock(), 0


@contextlib.contextmanager
def _no_gc():
    """The cyclic GC off while a parse builds millions of (acyclic) lists: each full collection
    over them held the GIL for 0.3 s, and made parsing 1.5M rows of [x] 4x slower. It is on
    again once no parse runs (the lists are then collected once, in about 0.1 s for 1.5M)."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


def loads_sliced(text: str):
    """json.loads(text), but no C call parses much more than SLICE_CHARS: a big document's
    first WALK_DEPTH levels are walked here and runs of their elements parsed at once, so that
    the thread running this lets others take the GIL between runs."""
    if len(text) <= SLICE_CHARS:
        return json.loads(text)
    with _no_gc():
        value, end = _value(text, _skip(text, 0), WALK_DEPTH)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _value(s: str, i: int, depth: int):
    if depth and len(s) - i > SLICE_CHARS:
        if s.startswith("[", i):
            return _array(s, _skip(s, i + 1), depth - 1)
        if s.startswith("{", i):
            return _object(s, _skip(s, i + 1), depth - 1)
    return _DECODER.raw_decode(s, i)


def _array(s: str, i: int, depth: int):
    out = []
    if s.startswith("]", i):
        return out, i + 1
    boundary = None  # matches the end of an element like the first one, and the comma after it
    walk = False     # elements are big: walk into each instead of parsing runs of them
    retry_at = 0
    while True:
        if boundary is not None and not walk and i >= retry_at:
            m = boundary.search(s, i + SLICE_CHARS)
            if m is not None:  # the elements up to that comma in one call
                j = m.end() - 1
                try:
                    out.extend(json.loads("[" + s[i:j] + "]"))
                    i = _skip(s, j + 1)
                    continue
                except (ValueError, RecursionError):
                    retry_at = j  # the comma is inside an element, or past this array
        start = i
        if boundary is None or walk:
            v, i = _value(s, i, depth)
        else:
            v, i = _DECODER.raw_decode(s, i)
        if boundary is None:
            walk = i - start > SLICE_CHARS
            tail = s[max(start, i - 64):i]
            boundary = re.compile(re.escape(tail[len(tail.rstrip("]}")):]) + r"\s*,")
        out.append(v)
        i = _skip(s, i)
        if s.startswith(",", i):
            i = _skip(s, i + 1)
        elif s.startswith("]", i):
            return out, i + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)


def _object(s: str, i: int, depth: int):
    out = {}
    if s.startswith("}", i):
        return out, i + 1
    while True:
        if not s.startswith('"', i):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, i)
        key, i = _DECODER.raw_decode(s, i)
        i = _skip(s, i)
        if not s.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
        out[key], i = _value(s, _skip(s, i + 1), depth)
        i = _skip(s, i)
        if s.startswith(",", i):
            i = _skip(s, i + 1)
        elif s.startswith("}", i):
            return out, i + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)


def to_array(value, dtype) -> np.ndarray:
    """np.asarray(value, dtype), converting a long list about SLICE_ELEMENTS numbers at a time."""
    if not isinstance(value, list) or len(value) < 2:
        return np.asarray(value, dtype)
    step = max(1, SLICE_ELEMENTS // max(1, np.asarray(value[0], dtype).size))
    if step >= len(value):
        return np.asarray(value, dtype)
    return np.concatenate([np.asarray(value[i:i + step], dtype)
                           for i in range(0, len(value), step)])


def _json_list(n: int, per_row: int, rows) -> list[bytes]:
    """json.dumps(rows(0, n)) in pieces, each encoding about SLICE_ELEMENTS numbers."""
    step = max(1, SLICE_ELEMENTS // max(1, per_row))
    pieces = [b"["]
    for i in range(0, n, step):
        pieces += [b", "] if i else []
        pieces.append(json.dumps(rows(i, min(i + step, n)))[1:-1].encode())
    return pieces + [b"]"]


def _json_array(a: np.ndarray) -> list[bytes]:
    if a.ndim == 0:
        return [json.dumps(a.tolist()).encode()]
    return _json_list(len(a), a[0].size if len(a) else 1, lambda i, j: a[i:j].tolist())


def encode_predict(result: dict[str, np.ndarray], row: bool) -> bytes:
    """TF Serving's predict answer: {"predictions": [...]} (row format, one entry per example,
    an object of the outputs when there are several) or {"outputs": ...} (columnar), joined in
    one copy (each copy of a 300 MB answer holds the GIL for 0.3 s)."""
    pieces = [b'{"predictions": ' if row else b'{"outputs": ']
    if len(result) == 1:
        pieces += _json_array(next(iter(result.values())))
    elif row:
        names, arrays = list(result), list(result.values())
        pieces += _json_list(len(arrays[0]), sum(a[0].size for a in arrays if len(a)),
                             lambda i, j: [dict(zip(names, values)) for values in
                                           zip(*(a[i:j].tolist() for a in arrays))])
    else:
        for k, (name, a) in enumerate(result.items()):
            pieces += [b", " if k else b"{", json.dumps(name).encode(), b": ", *_json_array(a)]
        pieces.append(b"}")
    return b"".join([*pieces, b"}"])


async def off_the_loop(size: int, fn, *args):
    """fn(*args), in a thread when `size` bytes are involved beyond THREAD_ABOVE_BYTES."""
    if size > THREAD_ABOVE_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


# ---------------------------------------------------------------------------- HTTP plumbing
class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def json_response(status: int, payload) -> web.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return web.Response(status=status, body=body, content_type="application/json")


class _AnswerThenClose(web.Response):
    """An answer after which the connection closes. The client may still be sending (a 1 MB
    header line): its bytes are read and dropped for up to LINGER_SECONDS after the answer, as
    nginx and Go do, or closing with unread data would reset the connection before the client
    reads the answer."""

    def __init__(self, connection: _Connection, status: int, message: str):
        super().__init__(status=status, content_type="application/json",
                         body=json.dumps({"error": message}).encode())
        self.force_close()
        self.connection = connection

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        transport = self.connection.transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # aiohttp pauses reading when it queues many requests
        await asyncio.wait([self.connection.lost], timeout=LINGER_SECONDS)


class _Connection(web_protocol.RequestHandler):
    """One client connection: aiohttp's HTTP/1.1 protocol, plus
    - a deadline for each request head (line and headers): --rest_api_read_timeout_seconds from the
      connection opening or from the head's first byte. (aiohttp's own timer closes only a
      connection left idle since its last answer: --rest_api_keepalive_timeout_seconds.)
    - our JSON answers to requests aiohttp cannot parse, closed with a linger."""

    def __init__(self, server: _Server, **kwargs):
        super().__init__(server, **kwargs)
        self.options = server.options
        self.busy = False  # a request's head is complete; our handler has it
        self.lost = asyncio.get_running_loop().create_future()
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.transport is not None:  # not refused by _Server.connection_made
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if not self.lost.done():
            self.lost.set_result(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._deadline is None:
            self._arm()
        super().data_received(data)

    def request_started(self) -> None:
        self.busy = True
        self._disarm()

    def request_finished(self) -> None:
        self.busy = False

    def _arm(self) -> None:
        self._deadline = asyncio.get_running_loop().call_later(
            self.options.rest_api_read_timeout_seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.busy:
            self.force_close()

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        """A request aiohttp could not parse (or, never expected, a handler that raised)."""
        o = self.options
        if isinstance(exc, LineTooLong) or "Too many headers" in str(message):
            status, message = 431, (
                f"Request header too large: at most {o.rest_api_max_header_count} lines of at "
                f"most {o.rest_api_max_header_bytes} bytes each (--rest_api_max_header_count, "
                "--rest_api_max_header_bytes)")
        elif status >= 500:
            log.error("REST %s %s failed", request.method, request.path, exc_info=exc)
            message = f"Internal error: {type(exc).__name__}: {exc}"
        else:
            message = f"Malformed HTTP request: {message or exc}"
        self.close()  # whatever the client sends from now on is dropped
        return _AnswerThenClose(self, status, message)


class _Server(web.Server):
    """aiohttp's low-level server making _Connection protocols, with the connection cap."""

    def __init__(self, handler, options: RestOptions, max_connections: int):
        kwargs = dict(access_log=None, max_headers=options.rest_api_max_header_count,
                      max_line_size=options.rest_api_max_header_bytes,
                      max_field_size=options.rest_api_max_header_bytes,
                      keepalive_timeout=options.rest_api_keepalive_timeout_seconds,
                      lingering_time=LINGER_SECONDS)
        super().__init__(handler, **kwargs)
        self.protocol_kwargs = {**kwargs, "loop": asyncio.get_running_loop()}
        self.options, self.max_connections = options, max_connections
        body = json.dumps({"error": f"Too many connections: this server takes at most "
                                    f"{max_connections} (--rest_api_max_connections)"})
        self.refusal = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
                        ).encode()

    def __call__(self) -> _Connection:
        return _Connection(self, **self.protocol_kwargs)

    def connection_made(self, handler, transport) -> None:
        super().connection_made(handler, transport)
        if len(self.connections) > self.max_connections:
            transport.write(self.refusal)  # flushed before the close
            handler.force_close()


# ---------------------------------------------------------------------------- the server
def status_json(response) -> dict:
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


class RestServer:
    def __init__(self, manager: Manager, options: RestOptions | None = None, peers=None,
                 v2_plane=None, access: access_log.AccessLog | None = None,
                 guard: auth.Guard | None = None):
        from serving import v2_dataplane, v2_rest  # v2_rest builds on this module

        self.manager, self.peers = manager, peers  # peers: sibling workers (workers.Peers)
        self.options = options or RestOptions()
        self.v2 = v2_rest.V2Rest(v2_plane or v2_dataplane.DataPlane(manager))
        self.access, self.guard = access, guard or auth.Guard()
        self._runner: web.ServerRunner | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        budget = connection_budget(self.options.rest_api_max_connections)
        self._runner = web.ServerRunner(_Server(self.handle, self.options, budget))
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=reuse_port or None,
                           backlog=min(budget, 4096))
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        return site.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish (up to `grace` s), close connections."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        for site in list(runner.sites):
            await site.stop()
        runner.server.pre_shutdown()  # idle connections close now, busy ones after answering
        await runner.server.shutdown(grace)
        await runner.cleanup()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: recorded in the access log (the one place for REST), then answered."""
        request.protocol.request_started()
        begun = None if self.access is None else self.access.begin(
            access_log.rest_protocol(request.path), f"{request.method} {request.path}",
            request.remote)
        status = 500
        try:
            response = await self._answer(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code)
            raise
        finally:
            if begun is not None:
                self.access.end(begun, status)
            request.protocol.request_finished()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        cors = self._cors(request)
        if self.options.cors_origins is not None and request.method == "OPTIONS" \
                and "Access-Control-Request-Method" in request.headers:
            return self._preflight(request, cors)
        refusal = self.guard.check_http(request.method, request.path, request.headers)
        if refusal is not None:
            status, message, headers = refusal
            response = json_response(status, {"error": message})
            response.headers.update({**headers, **cors})
            return response
        try:
            body = await self._body(request) if request.method == "POST" else b""
        except HttpError as e:  # the rest of the body is read and dropped, then we close
            response = json_response(e.status, {"error": e.message})
            response.force_close()
        else:
            response = (webpage.response(request.method, request.path)
                        if self.options.rest_api_web_page else None)
            if response is None:
                status, payload = await self.dispatch(request.method, request.path,
                                                      request.headers, body)
                if isinstance(payload, web.Response):  # v2 binary tensors or JSON
                    response = payload
                elif isinstance(payload, str):
                    response = web.Response(status=status, body=payload.encode(),
                                            headers={"Content-Type": METRICS_TYPE})
                else:
                    response = json_response(status, payload)
        response.headers.update(cors)
        return response

    def _cors(self, request) -> dict[str, str]:
        """The CORS headers for this request's Origin ({} when CORS is off or it is not allowed)."""
        origins, origin = self.options.cors_origins, request.headers.get("Origin")
        if origins is None or origin is None:
            return {}
        if "*" in origins:
            return {"Access-Control-Allow-Origin": "*"}
        if origin in origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    @staticmethod
    def _preflight(request, cors: dict[str, str]) -> web.Response:
        if not cors:
            return json_response(403, {"error": f"Origin {request.headers.get('Origin')!r} is "
                                                "not allowed (--rest_api_cors_allowed_origins)"})
        return web.Response(status=204, headers={
            **cors, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers":
                request.headers.get("Access-Control-Request-Headers", "Content-Type"),
            "Access-Control-Max-Age": "600"})

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The request body, within --max_request_bytes, each read within the read timeout."""
        limit, timeout = (self.options.max_request_bytes,
                          self.options.rest_api_read_timeout_seconds)
        too_big = HttpError(413, f"Request body exceeds the limit of {limit} bytes "
                                 "(--max_request_bytes)")
        if (request.content_length or 0) > limit:
            raise too_big
        if request.headers.get("Expect", "").lower() == "100-continue" and \
                request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        content, chunks, size = request.content, [], 0
        while not content.at_eof():
            chunk = content.read_nowait()  # what has arrived; else wait, within the timeout
            if not chunk:
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await content.readany()
                except TimeoutError:
                    raise HttpError(408, f"Request body paused for more than {timeout:g} s "
                                         "(--rest_api_read_timeout_seconds)") from None
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ routes
    async def metrics_text(self) -> str:
        return self.manager.metrics.render()  # every worker's sums in a --workers server

    async def dispatch(self, method: str, path: str, headers, body: bytes):
        """(HTTP status, payload): a str is Prometheus text, bytes are JSON, a web.Response is
        sent as it is, else a JSON value."""
        try:
            route, params = find_route(method, path)
            access_log.note(model=params.get("name"))
            return await route.handler(self, params, headers, body)
        except HttpError as e:
            return e.status, {"error": e.message}
        except ServingError as e:
            return HTTP_CODES.get(e.code, 500), {"error": e.message}
        except Exception as e:  # noqa: BLE001 - answer, log, keep serving
            log.exception("REST %s %s failed", method, path)
            return 500, {"error": f"Internal error: {type(e).__name__}: {e}"}

    # Handlers of ROUTES: (self, path parameters, headers, body) -> (HTTP status, payload).
    async def get_metrics(self, params, headers, body):
        return 200, await self.metrics_text()

    async def get_models(self, params, headers, body):
        return 200, self.list_models()

    async def get_status(self, params, headers, body):
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.CopyFrom(self._spec(params))
        return 200, status_json(self.manager.model_status(req))

    async def get_metadata(self, params, headers, body):
        return 200, self.metadata(self._spec(params))

    async def post_predict(self, params, headers, body):
        spec = self._spec(params)
        with self.manager.metrics.track(spec.name, "predict", "REST", "INTERNAL"):
            return 200, await self.predict(spec, headers, body)

    async def get_certificate(self, params, headers, body):
        return 200, await webpage.served_certificate(self.manager, self._spec(params))

    async def get_openapi(self, params, headers, body):
        return 200, openapi_document()

    @staticmethod
    def _spec(params: dict[str, str]) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=params["name"])
        version = params.get("version")
        if version is not None:
            if not (version.isascii() and version.isdigit()):
                raise HttpError(404, f"Malformed request: version {version!r} is not a number")
            if int(version) > versions.MAX_VERSION:
                raise invalid(f"version {version} is out of range (at most "
                              f"{versions.MAX_VERSION})")
            spec.version.value = int(version)
        elif params.get("label") is not None:
            spec.version_label = params["label"]
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
            state = self.manager.models.get(name)  # labels: the page shows them beside versions
            labels = dict(state.config.version_labels) if state is not None else {}
            models.append({"name": name, **status,
                           "version_labels": {k: str(v) for k, v in sorted(labels.items())}})
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

    async def predict(self, spec, headers, body: bytes) -> bytes:
        doc = await off_the_loop(len(body), self._parse, body, headers.get("Content-Type", ""))
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
            sig = self._signature(loaded, request)
        finally:
            loaded.release()
        row = "instances" in doc
        arrays = await off_the_loop(len(body), self._decode, sig,
                                    doc["instances"] if row else doc["inputs"], row)
        _, result, _ = await self.manager.predict(request, api="rest", arrays=arrays)
        return await off_the_loop(sum(a.nbytes for a in result.values()), encode_predict,
                                  result, row)

    @staticmethod
    def _parse(body: bytes, content_type: str):
        try:
            return loads_sliced(body.decode(json.detect_encoding(body), "surrogatepass"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            if isinstance(e, RecursionError):
                e = "JSON nested too deeply"
            hint = (f" (Content-Type was {content_type!r}; the body must be JSON)"
                    if content_type and "json" not in content_type else "")
            raise invalid(f"JSON Parse error: {e}{hint}") from None

    @staticmethod
    def _signature(loaded, request):
        sig_name = request.model_spec.signature_name or "serving_default"
        if sig_name not in loaded.signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{sig_name}\" not found.")
        return loaded.signatures[sig_name]

    @staticmethod
    def _decode(sig, value, row: bool) -> dict[str, np.ndarray]:
        names = list(sig.inputs)

        def array(name, v):
            if name not in sig.inputs:  # reported by Manager.prepare with the full signature
                return np.zeros(0)
            try:
                return to_array(v, sig.inputs[name].np_dtype)
            except (ValueError, TypeError, OverflowError, RecursionError) as e:
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


def _unimplemented(what: str):
    async def handler(server, params, headers, body):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, _UNIMPLEMENTED[what])
    return handler


def _v2(name: str):
    """The handler V2Rest.`name` of the server's v2 part (serving/v2_rest.py imports this
    module, so it is looked up when called)."""
    async def handler(server, params, headers, body):
        return await getattr(server.v2, name)(params, headers, body)
    return handler


# ---------------------------------------------------------------------------- the routes
@dataclasses.dataclass(frozen=True)
class Route:
    """One REST endpoint: a method, an OpenAPI path template (`{name}` is one path segment, or
    the part of one before a `:verb`), and its handler. ROUTES is the only routing there is:
    dispatch, the OpenAPI check (tests/test_serving_ops.py) and the docs read it."""

    method: str
    template: str
    handler: Callable
    pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/:]+)", re.escape(self.template))
        object.__setattr__(self, "pattern", re.compile(regex))


def _model_routes(method: str, tail: str, handler) -> list[Route]:
    """TF Serving's three ways of naming a model's version: latest, number, label."""
    return [Route(method, f"/v1/models/{{name}}{middle}{tail}", handler)
            for middle in ("", "/versions/{version}", "/labels/{label}")]


ROUTES: list[Route] = [
    Route("GET", "/v1/models", RestServer.get_models),
    *_model_routes("POST", ":predict", RestServer.post_predict),
    *_model_routes("GET", "", RestServer.get_status),
    *_model_routes("GET", "/metadata", RestServer.get_metadata),
    *_model_routes("GET", "/certificate", RestServer.get_certificate),  # zoo extension
    *_model_routes("POST", ":classify", _unimplemented("classify")),
    *_model_routes("POST", ":regress", _unimplemented("regress")),
    Route("GET", "/monitoring/prometheus/metrics", RestServer.get_metrics),
    Route("GET", "/openapi.json", RestServer.get_openapi),
    # The Open Inference Protocol (serving/v2_rest.py)
    Route("GET", "/v2", _v2("server_metadata")),
    Route("GET", "/v2/health/live", _v2("live")),
    Route("GET", "/v2/health/ready", _v2("ready")),
    *[Route(method, f"/v2/models/{{name}}{middle}{tail}", _v2(handler))
      for middle in ("", "/versions/{version}")
      for method, tail, handler in (("GET", "", "model_metadata"),
                                    ("GET", "/ready", "model_ready"),
                                    ("POST", "/infer", "post_infer"))],
]
ALIASES = {"/v1/models/": "/v1/models"}


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route serving `method path` and its path parameters; 404 (TF Serving's "Malformed
    request") for anything else, whatever the method."""
    path = ALIASES.get(path, path)
    for route in ROUTES:
        if route.method == method:
            m = route.pattern.fullmatch(path)
            if m is not None:
                return route, m.groupdict()
    raise HttpError(404, f"Malformed request: {method} {path}")


@functools.cache
def openapi_document() -> bytes:
    """serving/openapi.json, the OpenAPI 3 description of ROUTES (package data)."""
    return resources.files("serving").joinpath("openapi.json").read_bytes()
