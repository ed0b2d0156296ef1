"""Bearer-token auth and the model-control switch (docs/ARCHITECTURE.md, "Auth").

With `--auth_token_file`, every call must carry `authorization: Bearer <token>`: gRPC metadata,
checked by `Guard.grpc_interceptor()` (every service and method, present or future), or the HTTP
Authorization header, checked by `Guard.check_http` from `RestServer.handle`. Tokens are
compared in constant time (hmac.compare_digest). A missing or wrong token gets UNAUTHENTICATED,
or 401 with `WWW-Authenticate: Bearer` (RFC 6750: `error="invalid_token"` when one was sent).

Exempt, so that probes and the web page work without the token: gRPC `grpc.health.v1.Health`;
REST PUBLIC_PATHS (the v2 health paths, the OpenAPI document, the page `/` and its static files
under PUBLIC_PREFIXES; the page's API calls carry the token like any client's); CORS preflight
OPTIONS requests (browsers send them without credentials). A call between --workers siblings
carries their private token instead (PEER_TOKEN_HEADER; serving/supervisor.py hands it out), and is
accepted on it: `is_peer_call` is the one check of it.

`--enable_model_control=false` refuses the calls that change what is served (MODEL_CONTROL) with
UNIMPLEMENTED, whoever calls: gRPC defines that code as "not implemented or not supported/enabled
in this service", which this is, for every caller; PERMISSION_DENIED would say that another
caller's credentials could succeed.
"""

from __future__ import annotations

import argparse
import hmac
import os
from pathlib import Path

import grpc

AUTH_HEADER = "authorization"
PEER_TOKEN_ENV = "ZOO_WORKER_TOKEN"    # the --workers siblings' token, set by their supervisor
PEER_TOKEN_HEADER = "zoo-worker-token"  # the metadata key a sibling's call carries it in
PUBLIC_GRPC_SERVICES = ("/grpc.health.v1.Health/",)
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/openapi.json", "/"})
PUBLIC_PREFIXES = ("/web/",)  # the web page's files (issue 14: `/` and `/web/FILE`)
MODEL_CONTROL = frozenset({  # gRPC methods and REST paths that change the served models
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
})
MODEL_CONTROL_REST_SUFFIXES = ("/load", "/unload")  # v2 /v2/repository/models/NAME/(un)load
MODEL_CONTROL_OFF = ("model control is switched off on this server (--enable_model_control="
                     "false): it does not change its models on request")


def read_token(path: str, flag: str = "--auth_token_file") -> str:
    """The token in `path` (surrounding whitespace dropped); ValueError naming `flag` if the
    file cannot be read or holds no token."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"{flag} {path}: cannot read the token ({reason})") from None
    if not token:
        raise ValueError(f"{flag} {path}: the file is empty; put the bearer token in it")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError(f"{flag} {path}: the token must be one line of printable characters "
                         "without spaces")
    return token


# Two values are refused, whichever comes first, on both transports: a proxy that checks one of
# them and this server must never see different credentials.
DUPLICATE_AUTHORIZATION = "more than one Authorization value: send exactly one bearer token"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def is_peer_call(metadata, peer_token: str | None) -> bool:
    """Whether gRPC `metadata` carries the --workers siblings' private token."""
    if not peer_token:
        return False
    given = next((v for k, v in metadata or () if k == PEER_TOKEN_HEADER), None)
    return given is not None and hmac.compare_digest(given.encode(), peer_token.encode())


def add_flags(p: argparse.ArgumentParser, boolean) -> None:
    g = p.add_argument_group("auth")
    g.add_argument("--auth_token_file", metavar="PATH",
                   help="require 'authorization: Bearer <token>' (gRPC metadata or HTTP header) "
                        "on every call but health checks; the token is the file's content, read "
                        "once at start (default: no auth)")
    g.add_argument("--enable_model_control", type=boolean, nargs="?", const=True, default=True,
                   help="answer HandleReloadConfigRequest (default true); false refuses it "
                        "with UNIMPLEMENTED")


class Guard:
    """What this server lets through. `token` None: no auth; `peer_token`: the --workers
    siblings' private token, also accepted."""

    def __init__(self, token: str | None = None, model_control: bool = True,
                 peer_token: str | None = None):
        self._token = token.encode() if token else None
        self._peer_token = peer_token
        self.model_control = model_control

    @classmethod
    def from_args(cls, args) -> Guard:
        """Reads --auth_token_file (ValueError naming the flag if it cannot)."""
        token = read_token(args.auth_token_file) if args.auth_token_file else None
        peer = os.environ.get(PEER_TOKEN_ENV) if args.worker_index is not None else None
        return cls(token, args.enable_model_control, peer)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The tokens a call may carry (none: no auth), for the native data plane, which
        checks the calls it answers itself (serving/native/plane.py)."""
        return (self._token.decode(),) if self._token is not None else ()

    @property
    def active(self) -> bool:
        return self._token is not None or not self.model_control

    def authorized(self, value: str | bytes | None) -> bool:
        """Whether an Authorization value carries the token (always, without auth)."""
        if self._token is None:
            return True
        if value is None:
            return False
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        scheme, _, credentials = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(),
                                                                   self._token)

    # ------------------------------------------------------------------ REST
    def check_http(self, method: str, path: str, headers) -> tuple[int, str, dict] | None:
        """None to go on, else (HTTP status, message, extra headers) to answer with."""
        if not self.model_control and method == "POST" and path.startswith(
                "/v2/repository/") and path.endswith(MODEL_CONTROL_REST_SUFFIXES):
            return 501, MODEL_CONTROL_OFF, {}
        if self._token is None or method == "OPTIONS" or path in PUBLIC_PATHS or \
                path.startswith(PUBLIC_PREFIXES):
            return None
        given = headers.getall("Authorization", [])
        if len(given) > 1:
            return 401, DUPLICATE_AUTHORIZATION, {"WWW-Authenticate": 'Bearer realm="zoo", '
                                                                     'error="invalid_request"'}
        given = given[0] if given else None
        if self.authorized(given):
            return None
        if given is None:
            return 401, "missing bearer token: send the header 'Authorization: Bearer <token>'", \
                {"WWW-Authenticate": 'Bearer realm="zoo"'}
        return 401, "invalid bearer token", \
            {"WWW-Authenticate": 'Bearer realm="zoo", error="invalid_token"'}

    # ------------------------------------------------------------------ gRPC
    def grpc_interceptor(self) -> grpc.aio.ServerInterceptor | None:
        return _GrpcGuard(self) if self.active else None

    def grpc_refusal(self, method: str, metadata) -> tuple[grpc.StatusCode, str] | None:
        if not self.model_control and method in MODEL_CONTROL:
            return grpc.StatusCode.UNIMPLEMENTED, MODEL_CONTROL_OFF
        if self._token is None or method.startswith(PUBLIC_GRPC_SERVICES):
            return None
        if is_peer_call(metadata, self._peer_token):
            return None
        given = [v for k, v in metadata or () if k == AUTH_HEADER]
        if len(given) > 1:
            return grpc.StatusCode.UNAUTHENTICATED, DUPLICATE_AUTHORIZATION
        given = given[0] if given else None
        if self.authorized(given):
            return None
        if given is None:
            return (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token: send the metadata "
                    "'authorization: Bearer <token>'")
        return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"


class _GrpcGuard(grpc.aio.ServerInterceptor):
    """Answers a refused call with a handler of the method's own kind that aborts at once
    (one per method and refusal, cached)."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self._refusals: dict = {}

    async def intercept_service(self, continuation, details):
        refusal = self.guard.grpc_refusal(details.method, details.invocation_metadata)
        handler = await continuation(details)
        if refusal is None or handler is None:
            return handler
        key = (details.method, refusal)
        if key not in self._refusals:
            code, message = refusal

            async def refuse(request_or_iterator, context):
                await context.abort(code, message)

            kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary",
                                    "stream_stream") if getattr(handler, k) is not None)
            self._refusals[key] = handler._replace(**{kind: refuse})
        return self._refusals[key]
