"""The HTTP server of the REST port, on aiohttp: limits, CORS, auth and the access log for every
request, and routing through the table it is handed (serving/server.py builds it from the
protocols' rows). It knows no protocol: a route names the handler object (`owner`) and method
that answers it; errors are `{"error": "..."}` with the HTTP code TF Serving maps each gRPC status
to. Paths are percent-decoded (`/v1/models/mod%C3%A8le` names the model `modèle`).

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import resource
from collections.abc import Callable

import grpc
from aiohttp import HttpVersion11, web, web_protocol
from aiohttp.http_exceptions import LineTooLong

from serving.core import limits
from serving.core.errors import ServingError
from serving.observability import access_log
from serving.transports import auth, body_budget, content_encoding

log = logging.getLogger("serving.rest")  # the name operators filter on

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
LINGER_SECONDS = 2.0             # after an answer that closes, how long the client's rest is read
FD_RESERVE = 256                 # open files kept for everything but REST connections


# ---------------------------------------------------------------------------- options (flags)
@dataclasses.dataclass(frozen=True)
class RestOptions:
    """The REST server's flags, each field named as its flag (`add_flags` defines them)."""

    max_request_bytes: int = limits.MAX_REQUEST_BYTES  # shared with gRPC; the server's flag
    max_request_bytes_in_flight: int = limits.MAX_REQUEST_BYTES_IN_FLIGHT
    rest_api_max_connections: int = 1024
    rest_api_max_header_count: int = 100
    rest_api_max_header_bytes: int = 8190
    rest_api_read_timeout_seconds: float = 10.0
    rest_api_body_timeout_seconds: float = 60.0
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
    g.add_argument("--max_request_bytes_in_flight", type=int,
                   default=d.max_request_bytes_in_flight,
                   help="request-body bytes being read or decoded at once, counted at their "
                        "Content-Length (at --max_request_bytes when chunked or compressed) "
                        "until answered; beyond it a request is answered 503 with Retry-After "
                        f"at once (default {d.max_request_bytes_in_flight >> 20} MiB)")
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
    g.add_argument("--rest_api_body_timeout_seconds", type=float,
                   default=d.rest_api_body_timeout_seconds,
                   help="a request's whole body must arrive within this time of its head, "
                        "however it trickles, else 408 and close "
                        f"(default {d.rest_api_body_timeout_seconds:g})")
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
        self.options, self.access = server.options, server.access
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
        if (self._close or self._force_close) and self._reading_a_body():
            self._feed_body(data)
            return
        # aiohttp keeps only the error of a read whose bytes hold good requests and then one
        # it cannot parse, dropping the good ones unanswered; so a read holding more than one
        # request head is fed a head at a time, and nothing after the first bad one.
        start = 0
        while (cut := data.find(b"\r\n\r\n", start)) >= 0 and cut + 4 < len(data):
            super().data_received(data[start:cut + 4])
            start = cut + 4
            if any(isinstance(m, web_protocol._ErrInfo) for m, _ in self._messages):
                return
        super().data_received(data[start:] if start else data)

    def _reading_a_body(self) -> bool:
        request = self._current_request
        return request is not None and not request.content.is_eof()

    def _feed_body(self, data: bytes) -> None:
        """The body of the request being answered, while the server stops: aiohttp drops every
        byte once a connection is closing, which would leave a request whose head arrived before
        SIGTERM waiting for the rest of its body until the read timeout. Its body is still read
        (docs/ARCHITECTURE.md, "Serving", Shutdown); whatever follows it is not served."""
        try:
            self._parser.feed_data(data)
        except Exception:  # noqa: BLE001 - a body that does not parse ends the connection
            self.force_close()

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
        access = self.access
        if access is not None:  # a request that never reached RestServer.handle
            method, path = getattr(request, "method", "?"), getattr(request, "path", "?")
            access.end(access.begin(access_log.rest_protocol(path), f"{method} {path}",
                                    getattr(request, "remote", None)), status)
        self.close()  # whatever the client sends from now on is dropped
        return _AnswerThenClose(self, status, message)


class _Server(web.Server):
    """aiohttp's low-level server making _Connection protocols, with the connection cap."""

    def __init__(self, handler, options: RestOptions, max_connections: int,
                 access: access_log.AccessLog | None = None):
        kwargs = dict(access_log=None, max_headers=options.rest_api_max_header_count,
                      max_line_size=options.rest_api_max_header_bytes,
                      max_field_size=options.rest_api_max_header_bytes,
                      keepalive_timeout=options.rest_api_keepalive_timeout_seconds,
                      lingering_time=LINGER_SECONDS,
                      auto_decompress=False)  # serving/transports/content_encoding.py does
        super().__init__(handler, **kwargs)
        self.protocol_kwargs = {**kwargs, "loop": asyncio.get_running_loop()}
        self.options, self.max_connections, self.access = options, max_connections, access
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




# ---------------------------------------------------------------------------- routing
@dataclasses.dataclass(frozen=True)
class Route:
    """One REST endpoint: a method, an OpenAPI path template (`{name}` is one path segment, or
    the part of one before a `:verb`), and what answers it: the method `name` of the handler
    object the server was given as `owner` (path parameters, headers, body) -> (HTTP status,
    payload). serving.server.ROUTES is the only routing there is: dispatch, the OpenAPI check
    (tests/test_serving_ops.py) and the docs read it."""

    method: str
    template: str
    owner: str
    name: str
    pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/:]+)", re.escape(self.template))
        object.__setattr__(self, "pattern", re.compile(regex))


class Router:
    """Finds the route of a request in `routes`; `aliases` maps a path to the one it means."""

    def __init__(self, routes: list[Route], aliases: dict[str, str] | None = None):
        self.routes, self.aliases = list(routes), dict(aliases or {})

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route serving `method path` and its path parameters; 404 (TF Serving's
        "Malformed request") for anything else, whatever the method."""
        path = self.aliases.get(path, path)
        for route in self.routes:
            if route.method == method:
                m = route.pattern.fullmatch(path)
                if m is not None:
                    return route, m.groupdict()
        raise HttpError(404, f"Malformed request: {method} {path}")


# ---------------------------------------------------------------------------- the server
class RestServer:
    """The REST port. `router` finds each request's route, `handlers` maps a route's owner to
    the object answering it; `static(method, path)` answers the web page's files (or None)."""

    def __init__(self, router: Router, handlers: dict[str, object],
                 options: RestOptions | None = None, access: access_log.AccessLog | None = None,
                 guard: auth.Guard | None = None,
                 static: Callable[[str, str], web.Response | None] | None = None):
        self.router, self.static = router, static
        self._handlers = {r: getattr(handlers[r.owner], r.name) for r in router.routes}
        self.options = options or RestOptions()
        self.access, self.guard = access, guard or auth.Guard()
        self.bodies = body_budget.BodyBudget(self.options.max_request_bytes_in_flight)
        self._runner: web.ServerRunner | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        budget = connection_budget(self.options.rest_api_max_connections)
        self._runner = web.ServerRunner(_Server(self.handle, self.options, budget, self.access))
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
        if request.version.major != 1:  # llhttp takes HTTP/2.0 and 0.9 lines; aiohttp would
            # answer in that version. The status line takes the request's: make it 1.1.
            version = f"HTTP/{request.version.major}.{request.version.minor}"
            request._version = HttpVersion11  # read by aiohttp's status line, a reify
            request._cache.pop("version", None)
            response = json_response(505, {"error": f"HTTP version {version} is not supported: "
                                                    "this port speaks HTTP/1.1 (and 1.0)"})
            response.force_close()
            return response
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
            with self.bodies.hold(self._body_size(request)):
                response = await self._read_and_answer(request)
        except body_budget.Busy as e:  # the body is dropped as it comes (aiohttp's linger)
            response = json_response(503, {"error": str(e)})
            response.headers["Retry-After"] = str(body_budget.RETRY_AFTER_SECONDS)
        response.headers.update(cors)
        return response

    def _body_size(self, request: web.BaseRequest) -> int:
        """What the body counts for in the budget (docs/ARCHITECTURE.md, "Serving")."""
        if request.method != "POST":
            return 0
        identity = request.headers.get("Content-Encoding", "identity").strip().lower() \
            == "identity"
        if identity and request.content_length is not None:
            return min(request.content_length, self.options.max_request_bytes)
        return self.options.max_request_bytes

    async def _read_and_answer(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await self._body(request) if request.method == "POST" else b""
        except HttpError as e:  # the rest of the body is read and dropped, then we close
            response = json_response(e.status, {"error": e.message})
            response.force_close()
        else:
            response = (self.static(request.method, request.path)
                        if self.static is not None else None)
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
        total = self.options.rest_api_body_timeout_seconds
        loop = asyncio.get_running_loop()
        ends = loop.time() + total
        late = HttpError(408, f"Request body not received within {total:g} s "
                              "(--rest_api_body_timeout_seconds)")
        too_big = HttpError(413, f"Request body exceeds the limit of {limit} bytes "
                                 "(--max_request_bytes)")
        if (request.content_length or 0) > limit:
            raise too_big
        if request.headers.get("Expect", "").lower() == "100-continue" and \
                request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in content_encoding.ACCEPTED:
            raise HttpError(415, f"Content-Encoding {encoding!r} is not accepted: send one of "
                                 f"{', '.join(content_encoding.ACCEPTED)}")
        decoder = content_encoding.Decoder(encoding, limit)
        content, chunks = request.content, []
        try:
            while not content.at_eof():
                left = ends - loop.time()  # a trickle that never pauses long still ends
                if left <= 0:
                    raise late
                chunk = content.read_nowait()  # what has arrived; else wait, within the timeout
                if not chunk:
                    try:
                        async with asyncio.timeout(min(timeout, left)):
                            chunk = await content.readany()
                    except TimeoutError:
                        if left <= timeout:
                            raise late from None
                        raise HttpError(408, f"Request body paused for more than {timeout:g} "
                                             "s (--rest_api_read_timeout_seconds)") from None
                chunks.append(decoder.feed(chunk))
            chunks.append(decoder.finish())
        except content_encoding.TooBig:
            raise too_big from None
        except content_encoding.Undecodable as e:
            raise HttpError(400, f"Request body does not decode as its Content-Encoding "
                                 f"{encoding!r}: {e}") from None
        return b"".join(chunks)

    # ------------------------------------------------------------------ routes
    async def dispatch(self, method: str, path: str, headers, body: bytes):
        """(HTTP status, payload): a str is Prometheus text, bytes are JSON, a web.Response is
        sent as it is, else a JSON value."""
        try:
            route, params = self.router.find(method, path)
            access_log.note(model=params.get("name"))
            return await self._handlers[route](params, headers, body)
        except HttpError as e:
            return e.status, {"error": e.message}
        except ServingError as e:
            return HTTP_CODES.get(e.code, 500), {"error": e.message}
        except Exception as e:  # noqa: BLE001 - answer, log, keep serving
            log.exception("REST %s %s failed", method, path)
            return 500, {"error": f"Internal error: {type(e).__name__}: {e}"}
