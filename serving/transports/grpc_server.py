"""The gRPC server's transport: its options (--grpc_channel_arguments, message limits,
SO_REUSEPORT for --workers) and TLS (--ssl_config_file). The servicers are the protocols', added
by serving/server.py; the interceptors are auth's and the access log's."""

from __future__ import annotations

import asyncio

import grpc

from serving.observability import access_log
from serving.repository import protos


def channel_arguments(text: str) -> list[tuple[str, object]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise protos.ConfigError(f"--grpc_channel_arguments: {item!r} is not key=value")
        out.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return out


def server_options(channel_args: str, max_request_bytes: int, reuse_port: bool
                   ) -> list[tuple[str, object]]:
    """The gRPC server's options; gRPC core takes the first of repeated keys, so the user's
    --grpc_channel_arguments go first to win."""
    return [*channel_arguments(channel_args),
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port))]


def server_credentials(path: str) -> grpc.ServerCredentials:
    ssl = protos.read_text(path, protos.SSLConfig)
    if not ssl.server_key or not ssl.server_cert:
        raise protos.ConfigError(f"{path}: server_key and server_cert (PEM contents) are "
                                 "required")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
        require_client_auth=ssl.client_verify)


class RequestDecoding(grpc.aio.ServerInterceptor):
    """Every unary-unary request is parsed here rather than by gRPC: a message that does not
    parse (garbage, truncated, a bad varint) is INVALID_ARGUMENT naming the method, with no
    traceback in the log, and, being parsed inside the call, it has its access-log line (the
    access log's interceptor runs outside this one). gRPC's own parse ends such a call UNKNOWN
    ("Unexpected <class 'DecodeError'>") before any interceptor's wrapper runs."""

    def __init__(self):
        self._wrapped: dict = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        wrapped = self._wrapped.get(handler.unary_unary)
        if wrapped is None:
            wrapped = self._wrapped[handler.unary_unary] = handler._replace(
                request_deserializer=None,
                unary_unary=_decoding(handler.unary_unary, handler.request_deserializer,
                                      details.method))
        return wrapped


def _decoding(behavior, deserialize, method: str):
    async def decoded(raw: bytes, context):
        try:
            request = deserialize(raw)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError, or any parser's refusal
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Malformed request: {len(raw)} bytes that are not a "
                                f"{method.rsplit('/', 1)[-1]} request message (protobuf)")
        access_log.note(model=access_log.requested_model(request))
        return await behavior(request, context)

    return decoded


class LameDuck(grpc.aio.ServerInterceptor):
    """The drain's first part, as gRPC C++ servers' lame-duck mode: once `begin()` is called
    (SIGTERM), a new call is answered UNAVAILABLE, which clients and retry policies retry
    elsewhere, while the calls already running finish; `await idle()` returns when they have.
    Only then is the server stopped: a call that reaches grpc.aio after its stop began is
    CANCELLED by gRPC's core, which retry policies do not retry. Health checks still answer
    (NOT_SERVING), so that probes see the drain."""

    EXEMPT = "/grpc.health.v1.Health/"

    def __init__(self):
        self.stopping = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self._wrapped: dict = {}

    def begin(self) -> None:
        self.stopping = True

    async def idle(self) -> None:
        """Until the calls that were running when `begin()` was called have finished."""
        if self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or \
                details.method.startswith(self.EXEMPT):
            return handler
        wrapped = self._wrapped.get(handler.unary_unary)
        if wrapped is None:
            wrapped = self._wrapped[handler.unary_unary] = handler._replace(
                unary_unary=self._counted(handler.unary_unary))
        return wrapped

    def _counted(self, behavior):
        async def counted(request, context):
            if self.stopping:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "The server is shutting down (SIGTERM); retry: another "
                                    "server or worker answers")
            self.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1
                if not self.in_flight and self._idle is not None:
                    self._idle.set()

        return counted
