"""A TensorFlow-Serving-compatible model server for exported_models/
(docs/ARCHITECTURE.md, "Serving").

    python -m serving.server --model_base_path exported_models --port 8500 --rest_api_port 8501
    python -m serving.server --model_config_file models.config --enable_batching \\
        --batching_parameters_file batching.config

gRPC (asyncio): PredictionService (Predict, GetModelMetadata; Classify, Regress and
MultiInference answer UNIMPLEMENTED, saying why), ModelService (GetModelStatus,
HandleReloadConfigRequest), grpc.health.v1 and reflection. REST on --rest_api_port (aiohttp, on
the same event loop; see rest.py for its limits).
Flags keep TF Serving's names; both `--flag=value` and `--flag value` work. Binds 127.0.0.1
unless --host says otherwise. SIGTERM (or SIGINT) stops accepting, lets requests in flight finish
(up to --drain_seconds), unloads, and exits 0.

--model_base_path is a model directory holding version directories (served as --model_name, as in
TF Serving), or, when it holds none and --model_name is not given, a directory of such model
directories, each served under its own name (new ones are picked up while running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from importlib import resources
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import quiet, siblings, supervisor, webpage
from serving.core import limits
from serving.core.batching import BatchingOptions
from serving.core.errors import ServingError
from serving.core.lifecycle import Lifecycle
from serving.core.server_core import ServerCore
from serving.native import plane as native_plane
from serving.observability import access_log
from serving.observability.metrics import Metrics
from serving.protocols.open_inference import dataplane as v2_dataplane
from serving.protocols.open_inference import grpc_api as v2_grpc
from serving.protocols.open_inference import rest_api as v2_rest
from serving.protocols.tf_serving import grpc_api as tf_grpc
from serving.protocols.tf_serving import rest_api as tf_rest
from serving.repository import protos
from serving.runtime import backends
from serving.transports import auth, grpc_server, http_server

log = logging.getLogger("serving")

EVENT_LOOPS = ("uvloop", "asyncio")


class ServerRoutes:
    """The REST port's own rows: metrics (TF Serving's path) and the OpenAPI document."""

    OWNER = "server"

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def get_metrics(self, params, headers, body):
        await self.metrics.refresh()
        return 200, self.metrics.render()  # every worker's sums in a --workers server

    async def get_openapi(self, params, headers, body):
        return 200, openapi_document()


# The one routing table of the REST port: each protocol's rows and the server's own.
ROUTES: list[http_server.Route] = [
    *tf_rest.ROUTES,
    http_server.Route("GET", "/monitoring/prometheus/metrics", ServerRoutes.OWNER, "get_metrics"),
    http_server.Route("GET", "/openapi.json", ServerRoutes.OWNER, "get_openapi"),
    *v2_rest.ROUTES,
]
ROUTER = http_server.Router(ROUTES, tf_rest.ALIASES)


@functools.cache
def openapi_document() -> bytes:
    """serving/openapi.json, the OpenAPI 3 description of ROUTES (package data)."""
    return resources.files("serving").joinpath("openapi.json").read_bytes()


def _bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Serve exported zoo models over TF Serving's gRPC and REST APIs.")
    quiet.add_verbose_flag(p)
    g = p.add_argument_group("where (TF Serving flags)")
    g.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    g.add_argument("--rest_api_port", type=int, default=0,
                   help="REST port; 0 disables REST (default 0, as TF Serving)")
    g.add_argument("--ssl_config_file", help="SSLConfig text proto: server_key, server_cert "
                   "(PEM contents), optional custom_ca and client_verify")
    g.add_argument("--grpc_channel_arguments", default="",
                   help="comma-separated key=value gRPC server arguments")
    g = p.add_argument_group("what (TF Serving flags)")
    g.add_argument("--model_name", help="model name for --model_base_path (default 'default')")
    g.add_argument("--model_base_path", help="model directory, or directory of model directories")
    g.add_argument("--model_config_file", help="ModelServerConfig text proto (overrides the two "
                   "flags above)")
    g.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="seconds between polls for new and removed versions; 0 polls once")
    g.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
                   help="replay assets.extra/tf_serving_warmup_requests before serving")
    g.add_argument("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?",
                   const=True, default=False,
                   help="let version_labels name versions that are not (yet) available "
                        "(default false: such a config is refused at start and at reload)")
    g.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="threads one op may use (both backends); 0 = one per core. 1 serves "
                        "small requests from many clients with less CPU (see README)")
    g.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                   help="threads for independent ops (SavedModel backend); 0 = one per core")
    g = p.add_argument_group("batching (TF Serving flags)")
    g.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    g.add_argument("--batching_parameters_file", help="BatchingParameters text proto")
    g = p.add_argument_group("zoo server options")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--backend", choices=backends.BACKENDS, default="savedmodel",
                   help="runtime: the SavedModel (as TF Serving) or ONNX Runtime on model.onnx")
    g.add_argument("--max_request_bytes", type=int, default=limits.MAX_REQUEST_BYTES,
                   help="largest gRPC message or REST body accepted (default 64 MiB)")
    g.add_argument("--max_request_elements", type=int, default=0,
                   help="most tensor elements one request may ask for, refused with "
                        "INVALID_ARGUMENT before anything is allocated (one float_val fills a "
                        "whole tensor); default 0: as many float32 as --max_request_bytes "
                        "carries (16,777,216 at 64 MiB)")
    g.add_argument("--inference_threads", type=int, default=4,
                   help="threads running unbatched requests (default 4)")
    g.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the ports (SO_REUSEPORT), to use more than "
                        "one core; each loads its own copy of the models (default 1)")
    g.add_argument("--worker_index", type=int, help=argparse.SUPPRESS)  # set by supervisor.py
    g.add_argument("--worker_peers", help=argparse.SUPPRESS)
    g.add_argument("--worker_restarted", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--max_worker_restarts", type=int, default=supervisor.MAX_RESTARTS,
                   help="with --workers: a worker that dies is restarted (after 1 s, doubling "
                        "each time within the window); one that dies more often than this "
                        "within --worker_restart_window_seconds stops the server, exit 1 "
                        f"(default {supervisor.MAX_RESTARTS}; 0: the first death stops it)")
    g.add_argument("--worker_restart_window_seconds", type=float,
                   default=supervisor.RESTART_WINDOW_SECONDS,
                   help="the window of --max_worker_restarts (default "
                        f"{supervisor.RESTART_WINDOW_SECONDS:g})")
    g.add_argument("--event_loop", choices=EVENT_LOOPS, default=EVENT_LOOPS[0],
                   help="uvloop (default; less CPU a request than asyncio's own loop, see "
                        "README) or asyncio")
    g.add_argument("--require_certificates", action="store_true",
                   help="refuse versions without a metadata.json certificate (by default they "
                        "are served with a warning in their status; a certificate that does not "
                        "match its files is always refused)")
    g.add_argument("--data_plane", choices=native_plane.PLANES, default="python",
                   help="who answers Predict and v2 ModelInfer on --port: python (default), "
                        "native (predictd, C++ over TensorFlow's C API, in front of the Python "
                        "plane, which still "
                        "answers every other call; make native builds it) or auto (native where "
                        "it is built and can serve these options)")
    g.add_argument("--drain_seconds", type=float, default=30.0,
                   help="on SIGTERM, how long requests in flight may take to finish")
    g.add_argument("--log_level", default="INFO")
    http_server.add_flags(p, _bool)
    access_log.add_flags(p)
    auth.add_flags(p, _bool)
    return p


def initial_config(args) -> tuple[model_server_config_pb2.ModelServerConfig | None, Path | None]:
    """(config, discovery root): exactly one is not None."""
    if args.model_config_file:
        config = protos.read_text(args.model_config_file, protos.ModelServerConfig)
        return config, None
    if not args.model_base_path:
        raise protos.ConfigError("give --model_base_path (or --model_config_file)")
    base = Path(args.model_base_path).resolve()
    if not base.is_dir():
        raise protos.ConfigError(f"--model_base_path {args.model_base_path} is not a directory")
    if args.model_name is None and not Lifecycle.on_disk_versions(base):
        return None, base
    config = protos.ModelServerConfig()
    config.model_config_list.config.add(name=args.model_name or "default", base_path=str(base),
                                        model_platform="tensorflow")
    return config, None


def options(*argv: str) -> argparse.Namespace:
    """The server's options from its command-line flags, e.g. for an in-process Server:
    `Server(options("--model_base_path", "exported_models", "--port", "0"))`."""
    args = parser().parse_args(argv)
    check_options(args)
    return args


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values no server can run with (protos.ConfigError names the flag)."""
    for flag, value, least in (("--workers", args.workers, 1),
                               ("--max_worker_restarts", args.max_worker_restarts, 0),
                               ("--max_request_elements", args.max_request_elements, 0),
                               ("--tensorflow_intra_op_parallelism",
                                args.tensorflow_intra_op_parallelism, 0),
                               ("--tensorflow_inter_op_parallelism",
                                args.tensorflow_inter_op_parallelism, 0)):
        if value < least:
            raise protos.ConfigError(f"{flag} must be >= {least}")
    if args.rest_api_port and args.rest_api_port == args.port:
        raise protos.ConfigError("--rest_api_port cannot be the same as --port")
    try:
        http_server.RestOptions.from_args(args)
        access_log.check_args(args)
        if args.auth_token_file:  # read again by the Server; unreadable stops us here
            auth.read_token(args.auth_token_file)
    except ValueError as e:
        raise protos.ConfigError(str(e)) from None


# The health service's name under which each --workers worker says it is up; the public status
# (service "") turns SERVING only once every sibling says so, so a client that sees SERVING on
# the shared port may rely on all workers.
WORKER_UP = "zoo.worker"


class Server:
    """One model server, in this process: `await start()` loads the models and binds the ports
    (port 0 picks a free one; the bound ports are then in .port and .rest_port) and turns the
    health service SERVING, which is what readiness means; `await stop()` drains the requests
    in flight (up to --drain_seconds), unloads and closes. `python -m serving.server` is this,
    stopped by SIGTERM or SIGINT."""

    def __init__(self, args: argparse.Namespace):
        check_options(args)
        self.args = args
        self.port: int | None = None
        self.rest_port: int | None = None
        self.core: ServerCore | None = None
        self._grpc = None
        self._rest = None
        self._health = None
        self._poller = None
        self._peers = None
        self._access: access_log.AccessLog | None = None
        self._lame_duck: grpc_server.LameDuck | None = None
        self._v2 = None  # the Open Inference Protocol's data plane
        self.native: native_plane.NativePlane | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        args = self.args
        batching = None
        if args.batching_parameters_file and not args.enable_batching:
            raise protos.ConfigError("--batching_parameters_file needs --enable_batching")
        if args.enable_batching:
            batching = BatchingOptions()
            if args.batching_parameters_file:
                try:
                    batching = BatchingOptions.from_proto(protos.read_text(
                        args.batching_parameters_file, protos.BatchingParameters))
                except ValueError as e:
                    raise protos.ConfigError(f"{args.batching_parameters_file}: {e}") from None
        config, root = initial_config(args)
        native, python_why = self._data_plane()
        creds = (grpc_server.server_credentials(args.ssl_config_file) if args.ssl_config_file
                 else None)
        peers = None
        if args.worker_index is not None:
            peers = self._peers = siblings.Peers(
                args.worker_index, [int(p) for p in args.worker_peers.split(",")])
        grpc_options = grpc_server.server_options(args.grpc_channel_arguments,
                                                  args.max_request_bytes, peers is not None)

        metrics = Metrics(worker=peers.index if peers else None,
                          restarted=args.worker_restarted)
        core = self.core = ServerCore(
            args.backend, batching, args.file_system_poll_wait_seconds, metrics=metrics,
            inference_threads=args.inference_threads, discover_root=root,
            intra_op_threads=args.tensorflow_intra_op_parallelism,
            inter_op_threads=args.tensorflow_inter_op_parallelism,
            require_certificates=args.require_certificates,
            max_request_elements=(args.max_request_elements or
                                  limits.default_max_request_elements(args.max_request_bytes)),
            warmup=args.enable_model_warmup,
            allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models)
        core.data_plane = lambda name, version: ("python", python_why)
        try:
            await core.load(config)
        except ServingError as e:
            raise protos.ConfigError(e.message) from None

        try:  # docs/ARCHITECTURE.md, "Request logging" and "Auth"
            access = self._access = access_log.AccessLog.from_args(args, args.worker_index)
            if access is not None:
                access.behind_native = native
            guard = auth.Guard.from_args(args)
        except ValueError as e:
            raise protos.ConfigError(str(e)) from None
        lame_duck = self._lame_duck = grpc_server.LameDuck()  # UNAVAILABLE once stopping
        interceptors = [i for i in (access and access.grpc_interceptor(),  # outermost
                                    lame_duck,
                                    guard.grpc_interceptor(),  # refuses before any parse
                                    grpc_server.RequestDecoding()) if i is not None]
        server = self._grpc = grpc.aio.server(options=grpc_options, interceptors=interceptors)
        tf_grpc.add_to_server(core, server, peers)
        self._v2 = v2_dataplane.DataPlane(core)
        v2_service = v2_grpc.add_to_server(self._v2, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = (
            prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME, v2_service)
        reflection.enable_server_reflection(services, server)
        # Until every part is up, the health service says so (a client may ask during start-up).
        for name in ("", *services[:2]):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # With the native plane, predictd takes the public port and the Python server answers
        # behind it on loopback (docs/ARCHITECTURE.md, "The native data plane").
        address = "127.0.0.1:0" if native else f"{args.host}:{args.port}"
        try:
            self.port = (server.add_secure_port(address, creds) if creds
                         else server.add_insecure_port(address))
        except RuntimeError as e:
            raise protos.ConfigError(f"cannot listen on {address} for gRPC: {e}") from None
        if peers:  # the private port through which a reload reaches every worker
            try:
                server.add_insecure_port(peers.own_address)
            except RuntimeError as e:
                raise protos.ConfigError(f"cannot listen on {peers.own_address} (worker port): "
                                         f"{e}") from None
        await server.start()
        if native:
            behind = self.port
            self.native = native_plane.NativePlane(
                core, args.host, args.port, behind, args.max_request_bytes,
                core.max_request_elements, args.tensorflow_intra_op_parallelism,
                args.tensorflow_inter_op_parallelism, core.batching, access, guard)
            try:
                self.port = await self.native.start()
            except RuntimeError as e:
                raise protos.ConfigError(f"--data_plane native: {e}") from None
            core.data_plane = self.native.plane_of
            _say(f"[serving] gRPC on {args.host}:{self.port}: native data plane (predictd) "
                 f"answers Predict and ModelInfer, the Python plane the rest "
                 f"(on 127.0.0.1:{behind})")
        else:
            _say(f"[serving] gRPC{' (TLS)' if creds else ''} on {args.host}:{self.port}")
        if args.rest_api_port:
            handlers = {tf_rest.OWNER: tf_rest.TfServingRest(core),
                        v2_rest.OWNER: v2_rest.V2Rest(self._v2),
                        ServerRoutes.OWNER: ServerRoutes(core.metrics)}
            self._rest = http_server.RestServer(
                ROUTER, handlers, http_server.RestOptions.from_args(args), access, guard,
                static=webpage.response if args.rest_api_web_page else None)
            try:
                self.rest_port = await self._rest.start(args.host, args.rest_api_port,
                                                        reuse_port=peers is not None)
            except OSError as e:
                raise protos.ConfigError(f"cannot listen on {args.host}:{args.rest_api_port} "
                                         f"for REST: {e.strerror}") from None
            _say(f"[serving] REST on http://{args.host}:{self.rest_port}")
        if peers:
            await self._health.set(WORKER_UP, health_pb2.HealthCheckResponse.SERVING)
            await peers.wait_up(WORKER_UP)
        for name in ("", *services[:2]):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        plane = "native" if self.native else f"python ({python_why})"
        _say(f"[serving] models: {served_versions(core, self.native is not None)}; backend "
             f"{args.backend}; data plane {plane}; batching {'on' if batching else 'off'}; "
             f"event loop {type(loop).__module__}")
        self._poller = loop.create_task(core.poll_forever())

    def _data_plane(self) -> tuple[bool, str]:
        """(whether predictd answers Predict, why not) from --data_plane, saying why not under
        auto."""
        wanted = self.args.data_plane
        if wanted == "python":
            return False, "--data_plane python"
        reason = native_plane.unsupported(self.args)
        if reason and wanted == "native":
            raise protos.ConfigError(f"--data_plane native: {reason}")
        if reason:
            _say(f"[serving] data plane: python ({reason})")
        return reason is None, f"--data_plane auto: {reason}"

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to `grace`, default
        --drain_seconds), unload. Safe to call on a server that did not (fully) start."""
        grace = self.args.drain_seconds if grace is None else grace
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._v2 is not None:
            self._v2.stopping = True
        if self.native is not None:  # first: it forwards to the Python server until it stops
            await self.native.stop()
            self.native = None
        stops = []
        if self._grpc is not None:
            stops.append(self._stop_grpc(grace))
        if self._rest is not None:
            stops.append(self._rest.stop(grace))
        await asyncio.gather(*stops)
        self._grpc = self._rest = None
        if self.core is not None:
            await self.core.close()
            self.core = None
        if self._peers is not None:
            await self._peers.close()
            self._peers = None
        if self._access is not None:
            self._access.close()
            self._access = None


    async def _stop_grpc(self, grace: float) -> None:
        """Lame duck first: new calls UNAVAILABLE while those in flight finish (within
        `grace`), then the gRPC server's own stop with what is left of it."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace
        if self._lame_duck is not None:
            self._lame_duck.begin()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._lame_duck.idle()
        await self._grpc.stop(max(0.0, ends - loop.time()))


def served_versions(core: ServerCore, planes: bool) -> str:
    """The start-up line's models: each with its available versions, and with `planes` the
    plane that answers each version's gRPC Predict (and why not the native one)."""
    def version(name: str, v: int) -> str:
        if not planes:
            return str(v)
        plane, why = core.data_plane(name, v)
        return f"{v} {plane}" + (f" ({why})" if why else "")

    served = ", ".join(f"{n} v{', v'.join(version(n, v) for v in core.available(n)) or ' (none)'}"
                       for n in core.model_names())
    return served or "(none yet)"


async def serve(args) -> int:
    """Run a Server until SIGTERM or SIGINT, which may also come while it is starting."""
    server = Server(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        starting.result()  # a ConfigError ends here, the server already stopped
        await stopping
    else:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    _say(f"[serving] stopping: draining requests in flight (up to {args.drain_seconds:g} s)")
    await server.stop()
    _say("[serving] stopped")
    return 0


def _say(line: str) -> None:
    """A line on stderr, unless stderr is gone (a worker whose supervisor was killed: its pipe
    has no reader any more), which must not stop the drain."""
    with contextlib.suppress(BrokenPipeError):
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        check_options(args)
    except protos.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.worker_index is not None:
        supervisor.die_with_supervisor()
    else:  # a worker's siblings share its ports; anyone else on them is another server
        for flag, port in (("--port", args.port), ("--rest_api_port", args.rest_api_port)):
            if supervisor.listening(args.host, port):
                print(f"error: {args.host}:{port} ({flag}) is already served by another "
                      "process; stop it or choose another port", file=sys.stderr)
                return 2
    if args.workers > 1 and args.worker_index is None:
        return supervisor.supervise(args, argv)
    who = "%(name)s" if args.worker_index is None else f"%(name)s worker {args.worker_index}"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {who}: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loop_factory = None
    if args.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(args))
    except protos.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
