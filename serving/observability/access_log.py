"""Request logging: one JSON access-log line per request, and sampled payload records
(docs/ARCHITECTURE.md, "Request logging").

Each transport records in ONE place: gRPC through `AccessLog.grpc_interceptor()` (a grpc.aio
server interceptor, so every service and method, present or future, is covered), REST in
`RestServer.handle`. The record of the request being served lives in a contextvar; any code
running for it fills in what the transport cannot know with `note(model=, version=, rows=)`
(`ServerCore.run` does, for every inference of every protocol) and `note_payload(inputs, outputs)`.
Both are no-ops when logging is off or the request is not sampled.

An access-log line (keys always present, null when unknown):

    {"time": "2026-11-30T08:01:02.345Z", "protocol": "tfs-grpc",
     "method": "/tensorflow.serving.PredictionService/Predict", "model": "softmax_regression",
     "version": 1, "rows": 1, "status": "OK", "latency_ms": 0.412, "peer": "ipv4:127.0.0.1:5123",
     "id": "1f2a-17"}

Lines are written by `line_file.LineFile`: buffered, one write of whole lines every
`--access_log_flush_seconds` (the per-line cost of `logging` was most of the log's cost).

`status` is the gRPC code's name for gRPC and the HTTP status (a number) for REST. `protocol` is
the API and the transport: tfs (TF Serving's), v2 (the Open Inference Protocol), health,
reflection, metrics or http (anything else), then -grpc or -rest. Streaming gRPC calls (health
Watch, reflection) are not logged. `id` ties a line to its payload record.

Payload records (`--payload_log_sample_rate`, a fraction of requests chosen at random) go to a
size-rotated file (logging.handlers.RotatingFileHandler): the request's input tensors and the
answer's output tensors, each as dtype, shape, min, max and mean, and in full when it has at
most `--payload_log_max_values` elements. Under --workers each worker rotates its own file
(NAME.wI): two processes rotating one file would lose records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import itertools
import json
import logging
import logging.handlers
import math
import os
import random
import time

import grpc
import numpy as np

from serving.observability.line_file import LineFile

GRPC_APIS = (("/tensorflow.serving.", "tfs"), ("/inference.", "v2"),
             ("/grpc.health.", "health"), ("/grpc.reflection.", "reflection"))
REST_APIS = (("/v1/", "tfs"), ("/v2/", "v2"), ("/monitoring/", "metrics"))

_current: contextvars.ContextVar[Record | None] = contextvars.ContextVar("zoo_access_record",
                                                                        default=None)


def api_of(path: str, table) -> str:
    for prefix, api in table:
        if path.startswith(prefix):
            return api
    return "http" if table is REST_APIS else "grpc"


def rest_protocol(path: str) -> str:
    return ("v2" if path == "/v2" else api_of(path, REST_APIS)) + "-rest"


class Record:
    """What is known about one request so far."""

    __slots__ = ("id", "protocol", "method", "model", "version", "rows", "peer", "started",
                 "sampled", "inputs", "outputs")

    def __init__(self, id_, protocol, method, peer, model, sampled):
        self.id, self.protocol, self.method, self.peer = id_, protocol, method, peer
        self.model, self.version, self.rows = model, None, None
        self.started, self.sampled = time.perf_counter(), sampled
        self.inputs = self.outputs = None


def note(*, model: str | None = None, version: int | None = None,
         rows: int | None = None) -> None:
    """Fill in the current request's model, version and rows (None leaves a field as it is)."""
    record = _current.get()
    if record is None:
        return
    if model is not None:
        record.model = model
    if version is not None:
        record.version = version
    if rows is not None:
        record.rows = rows


def note_payload(inputs: dict[str, np.ndarray] | None = None,
                 outputs: dict[str, np.ndarray] | None = None) -> None:
    """Keep the current request's tensors for its payload record, if it was sampled."""
    record = _current.get()
    if record is None or not record.sampled:
        return
    if inputs is not None:
        record.inputs = inputs
    if outputs is not None:
        record.outputs = outputs


def requested_model(request) -> str | None:
    """The model a gRPC request names: TF Serving's model_spec.name or v2's model_name."""
    spec = getattr(request, "model_spec", None)
    name = spec.name if spec is not None else getattr(request, "model_name", None)
    return name or None


def _json(value) -> str:
    """One JSON value: str (escaped by json's C encoder), int or None."""
    if isinstance(value, str):
        return _json_string(value)
    return "null" if value is None else str(int(value))


_json_string = json.encoder.encode_basestring_ascii
_second = (None, "")  # the last whole second formatted: (second, text), replaced as one


def _utc(t: float) -> str:
    global _second
    whole, text = _second
    if int(t) != whole:
        whole = int(t)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = whole, text
    return f"{text}.{int(t % 1 * 1000):03d}Z"


def tensor_summary(a: np.ndarray, max_values: int) -> dict:
    out = {"dtype": str(a.dtype), "shape": list(a.shape)}
    if a.size and a.dtype.kind in "biuf":
        out.update(min=a.min().item(), max=a.max().item(), mean=float(a.mean(dtype=np.float64)))
    if a.size <= max_values:
        out["values"] = a.tolist() if a.dtype.kind != "S" else [
            v.decode("utf-8", "backslashreplace") for v in a.ravel()]
    return out


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("request logging (off by default)")
    g.add_argument("--access_log", metavar="PATH",
                   help="write one JSON line per request to PATH (appended; reopened if moved, "
                        "for logrotate), or to stderr with '-'")
    g.add_argument("--access_log_flush_seconds", type=float, default=1.0,
                   help="write the access log's pending lines this often (default 1, as "
                        "Envoy does; a kill -9 loses at most that much); 0 writes every line "
                        "at once, at a cost in throughput")
    g.add_argument("--payload_log_sample_rate", type=float, default=0.0,
                   help="fraction of requests (0..1) whose input and output tensors go to "
                        "--payload_log_file (default 0: none)")
    g.add_argument("--payload_log_file", metavar="PATH", help="payload records, rotated by size")
    g.add_argument("--payload_log_max_bytes", type=int, default=100 << 20,
                   help="rotate the payload file at this size (default 100 MiB)")
    g.add_argument("--payload_log_backup_count", type=int, default=5,
                   help="rotated payload files kept (default 5)")
    g.add_argument("--payload_log_max_values", type=int, default=0,
                   help="log a tensor in full when it has at most this many elements, else "
                        "only dtype, shape, min, max, mean (default 0: summaries only)")


def check_args(args) -> None:
    """ValueError naming the flag whose value cannot be used."""
    rate = args.payload_log_sample_rate
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--payload_log_sample_rate must be between 0 and 1, got {rate}")
    for flag in ("payload_log_max_bytes", "payload_log_backup_count", "payload_log_max_values"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if not 0 <= args.access_log_flush_seconds < math.inf:  # NaN fails too
        raise ValueError("--access_log_flush_seconds must be a number >= 0, "
                         f"got {args.access_log_flush_seconds}")
    if rate > 0 and not args.payload_log_file:
        raise ValueError("--payload_log_sample_rate needs --payload_log_file")


# The metadata key in which the native data plane passes on the caller's address with a call it
# forwards (serving/native/src/predictd.cc), read only when `AccessLog.behind_native` is set (the
# Python gRPC server then listens on loopback behind predictd, which drops a caller's own value).
FORWARDED_PEER = "zoo-forwarded-peer"


class AccessLog:
    """The access log and the payload log of one server process; build with `from_args`."""

    def __init__(self, access: LineFile | None, payload: logging.Handler | None = None,
                 sample_rate: float = 0.0, max_values: int = 0):
        self._access = access
        self.behind_native = False  # gRPC calls come through predictd: FORWARDED_PEER is the peer
        self._payload = self._logger("serving.payload", payload)
        self.sample_rate = sample_rate if payload is not None else 0.0
        self.max_values = max_values
        self._ids = itertools.count(1)
        self._pid = f"{os.getpid():x}"
        self._random = random.random

    @staticmethod
    def _logger(name: str, handler: logging.Handler | None) -> logging.Logger | None:
        if handler is None:
            return None
        logger = logging.getLogger(name)
        logger.propagate = False  # the lines go to their own file, never to the server's log
        logger.setLevel(logging.INFO)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        return logger

    @classmethod
    def from_args(cls, args, worker: int | None = None) -> AccessLog | None:
        """None when neither log is asked for. Bad values raise ValueError naming the flag."""
        check_args(args)
        rate = args.payload_log_sample_rate
        if not args.access_log and rate == 0:
            return None
        access = payload = None
        if args.access_log:
            path = None if args.access_log == "-" else args.access_log
            access = _open(LineFile, "--access_log", path, args.access_log_flush_seconds)
        if rate > 0:
            path = args.payload_log_file + (f".w{worker}" if worker is not None else "")
            payload = _open(logging.handlers.RotatingFileHandler, "--payload_log_file", path,
                            encoding="utf-8", maxBytes=args.payload_log_max_bytes,
                            backupCount=args.payload_log_backup_count)
        return cls(access, payload, rate, args.payload_log_max_values)

    # ------------------------------------------------------------------ one request
    def begin(self, protocol: str, method: str, peer: str | None,
              model: str | None = None) -> tuple[Record, contextvars.Token]:
        sampled = self.sample_rate > 0 and self._random() < self.sample_rate
        record = Record(f"{self._pid}-{next(self._ids)}", protocol, method, peer, model, sampled)
        return record, _current.set(record)

    def end(self, begun: tuple[Record, contextvars.Token], status) -> None:
        record, token = begun
        _current.reset(token)
        now = time.time()
        latency = time.perf_counter() - record.started
        if self._access is not None:
            self._line(now, record.protocol, record.method, record.model, record.version,
                       record.rows, status, latency, record.peer, record.id)
        if record.sampled:
            self._write_payload(record, now, status)

    def answered(self, when: float, method: str, model: str | None, version: int | None,
                 rows: int | None, status: str, seconds: float, peer: str | None) -> None:
        """The line of a gRPC call another process answered (the native data plane's, pulled
        by serving/native/plane.py): `when` its end (Unix seconds), `seconds` its latency."""
        if self._access is not None:
            self._line(when, api_of(method, GRPC_APIS) + "-grpc", method, model, version, rows,
                       status, seconds, peer, f"{self._pid}-{next(self._ids)}")

    def _line(self, now, protocol, method, model, version, rows, status, latency, peer, id_):
        # json.dumps of the dict costs 2.7x this (3.7 vs 1.4 us)
        self._access.write(
            f'{{"time": "{_utc(now)}", "protocol": "{protocol}", '
            f'"method": {_json(method)}, "model": {_json(model)}, '
            f'"version": {_json(version)}, "rows": {_json(rows)}, '
            f'"status": {_json(status)}, "latency_ms": {latency * 1e3:.3f}, '
            f'"peer": {_json(peer)}, "id": "{id_}"}}')

    def _write_payload(self, record: Record, now: float, status) -> None:
        def tensors(arrays):
            if arrays is None:
                return None
            return {k: tensor_summary(np.asarray(v), self.max_values) for k, v in arrays.items()}

        self._payload.info(json.dumps({
            "time": _utc(now), "id": record.id, "protocol": record.protocol,
            "method": record.method, "model": record.model, "version": record.version,
            "status": status, "inputs": tensors(record.inputs),
            "outputs": tensors(record.outputs)}))

    def close(self) -> None:
        if self._access is not None:
            self._access.close()
        for handler in list(self._payload.handlers) if self._payload else ():
            self._payload.removeHandler(handler)
            handler.close()

    # ------------------------------------------------------------------ gRPC
    def grpc_interceptor(self) -> grpc.aio.ServerInterceptor:
        return _GrpcInterceptor(self)


def _open(opener, flag: str, path: str | None, *args, **kwargs):
    try:
        return opener(path, *args, **kwargs)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot open for writing ({e.strerror})") from None


def grpc_status(context, error: BaseException | None) -> str:
    """The name of the code a call ended with, as its context knows it."""
    code = context.code()
    if code is not None:
        if isinstance(code, int):  # an abort before grpc turns it into a StatusCode
            code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
        if code is not None:
            return code.name
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


class _GrpcInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler so that its call is recorded (wrappers are cached by
    the handler function: one per method, built on its first call)."""

    def __init__(self, log: AccessLog):
        self.log = log
        self._wrapped: dict = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrapped.get(handler.unary_unary)
        if wrapped is None:
            wrapped = self._wrapped[handler.unary_unary] = handler._replace(
                unary_unary=self._wrap(handler.unary_unary, details.method))
        return wrapped

    def _wrap(self, behavior, method: str):
        log, protocol = self.log, api_of(method, GRPC_APIS) + "-grpc"

        async def logged(request, context):
            peer = context.peer()
            if log.behind_native:
                peer = next((v for k, v in context.invocation_metadata() or ()
                             if k == FORWARDED_PEER), peer)
            begun = log.begin(protocol, method, peer, requested_model(request))
            error = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                log.end(begun, grpc_status(context, error))

        return logged

