"""`ServerCore`: what is served and how a request runs, behind the narrow API both protocols call
(TF Serving's ServerCore: the RPC services "remain stateless and perform all lookups of
servables via ServerCore", model_servers/server_core.h; docs/ARCHITECTURE.md, "Serving in
layers").

It *has* a lifecycle (serving/core/lifecycle.py: configuration, polling, load, warmup, unload)
and offers: `resolve` (a ModelSpec to a loaded version), `serve` (the same for an inference
request, timed for the version's statistics, serving/core/statistics.py), `label_version`,
`check` (a
PredictRequest against its signature, serving/core/validation.py) and `run` (inline, on a
thread or through the version's batcher, serving/core/batching.py), the read-only views
`model_names`, `status`, `labels`, `available`, `statistics`, `ready`, `platform`,
`batching`, `max_batch_size` and `data_plane` (which plane answers a version's gRPC inference,
set by the server), the limit `max_request_elements`, the metrics, and the lifecycle's
operations (`load`, `reload`, `poll`, `poll_forever`, `drain`, `close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import model_pb2, predict_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.core import limits, validation
from serving.core.batching import BatchingOptions, BatchTooLarge, QueueFull
from serving.core.errors import ServingError, invalid, not_found
from serving.core.lifecycle import Lifecycle, LoadedVersion
from serving.core.statistics import VersionStatistics
from serving.observability import access_log
from serving.observability.metrics import Metrics


class _Request:
    """The clock points of the inference request in progress (one per asyncio task)."""

    __slots__ = ("start", "run_asked", "ran", "rows", "queue_ns", "infer_ns")

    def __init__(self, start: int):
        self.start, self.run_asked, self.ran, self.rows = start, 0, 0, 0
        self.queue_ns = self.infer_ns = 0


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "zoo_request", default=None)


class ServerCore:
    def __init__(self, backend: str = "savedmodel", batching: BatchingOptions | None = None,
                 poll_seconds: float = 1.0, metrics: Metrics | None = None,
                 discover_root: Path | None = None, inference_threads: int = 4,
                 max_request_elements: int = limits.DEFAULT_MAX_REQUEST_ELEMENTS,
                 **lifecycle_options):
        """The lifecycle's options (see there), and the threads that run requests too slow to
        run on the event loop."""
        self.max_request_elements = max_request_elements
        self.lifecycle = Lifecycle(backend, batching, poll_seconds, metrics, discover_root,
                                   max_request_elements=max_request_elements,
                                   **lifecycle_options)
        self.metrics = self.lifecycle.metrics
        self.executor = ThreadPoolExecutor(inference_threads, thread_name_prefix="infer")
        # (name, version) -> (plane, why): which data plane answers a version's gRPC inference
        # calls and, for the Python one, why not the native one (docs/ARCHITECTURE.md, "The
        # native data plane"). The server sets it; serving/native/plane.py knows it under
        # --data_plane native.
        self.data_plane: Callable[[str, int], tuple[str, str]] = \
            lambda name, version: ("python", "")

    # ---------------------------------------------------------------- what is served
    def model_names(self) -> list[str]:
        return sorted(self.lifecycle.models)

    def status(self, name: str) -> dict[int, tuple[int, str]] | None:
        """version -> (ModelVersionStatus.State, message) of a model, None if it is not served."""
        state = self.lifecycle.models.get(name)
        return None if state is None else dict(state.status)

    def labels(self, name: str) -> dict[str, int]:
        state = self.lifecycle.models.get(name)
        return dict(state.config.version_labels) if state is not None else {}

    def available(self, name: str) -> list[int]:
        state = self.lifecycle.models.get(name)
        return sorted(state.available) if state is not None else []

    def statistics(self, name: str) -> dict[int, VersionStatistics]:
        """version -> what each loaded version of a model has done (empty if none is loaded)."""
        state = self.lifecycle.models.get(name)
        return {v: loaded.statistics for v, loaded in sorted(state.available.items())
                } if state is not None else {}

    def ready(self) -> bool:
        """Every configured model has a version available."""
        return all(s.available for s in self.lifecycle.models.values())

    @property
    def platform(self) -> str:
        """The backend the versions run on (--backend)."""
        return self.lifecycle.backend_kind

    @property
    def batching(self) -> BatchingOptions | None:
        """The batching parameters (--enable_batching), None when batching is off."""
        return self.lifecycle.batching

    def max_batch_size(self, sig) -> int:
        """The most rows one request may carry for `sig`; 0 if it does not batch (a tensor
        without a leading -1). The element limit over one row's elements (a variable
        dimension counted as 1), and no more than a batch when batching is on."""
        specs = [*sig.inputs.values(), *sig.outputs.values()]
        if not all(s.shape and s.shape[0] == -1 for s in specs):
            return 0
        row = sum(math.prod(max(d, 1) for d in s.shape[1:]) for s in sig.inputs.values())
        rows = max(1, self.max_request_elements // max(row, 1))
        return min(rows, self.batching.max_batch_size) if self.batching else rows

    # ---------------------------------------------------------------- resolving requests
    def label_version(self, name: str, label: str) -> int:
        """The version a label names; INVALID_ARGUMENT if the model has no such label."""
        version = self.labels(name).get(label)
        if version is None:
            raise invalid(f"Unrecognized servable version label: {label}")
        return version

    def resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The version a ModelSpec names, acquired (call `release()` when done)."""
        if not spec.name:
            raise invalid("Missing ModelSpec")
        state = self.lifecycle.models.get(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self.label_version(spec.name, spec.version_label)
            loaded = state.available.get(version)
            if loaded is None:
                raise not_found(f"Servable not found for request: Specific({spec.name}, "
                                f"{version}) (label {spec.version_label})")
        elif choice == "version":
            version = spec.version.value
            loaded = state.available.get(version) if state else None
            if loaded is None:
                raise not_found(f"Servable not found for request: Specific({spec.name}, "
                                f"{version})")
        else:
            if state is None or not state.available:
                raise not_found(f"Servable not found for request: Latest({spec.name})")
            loaded = state.available[max(state.available)]
        loaded.acquire()
        return loaded

    @contextlib.contextmanager
    def serve(self, spec: model_pb2.ModelSpec) -> Iterator[LoadedVersion]:
        """An inference request on the version `spec` names, for the block: resolved and
        acquired, then released; the version's statistics count it (success or fail, its
        duration, its phases: serving/core/statistics.py). The protocol keeps inside the
        block what belongs to the request (checks, decoding, the run, building the answer)."""
        loaded = self.resolve(spec)
        request = _Request(time.perf_counter_ns())
        token = _REQUEST.set(request)
        ok = False
        try:
            yield loaded
            ok = True
        finally:
            _REQUEST.reset(token)
            loaded.release()
            end = time.perf_counter_ns()
            # Every phase is added at the request's end, together: a reader between two
            # requests' phases would see unequal counts (perf_analyzer refuses them).
            stats = loaded.statistics
            if request.ran:
                stats.compute_input.add(request.run_asked - request.start)
                stats.ran(request.queue_ns, request.infer_ns)
                stats.compute_output.add(end - request.ran)
            stats.request(ok, end - request.start, request.rows)

    def check(self, loaded: LoadedVersion, request: predict_pb2.PredictRequest,
              arrays: dict[str, np.ndarray] | None = None) -> validation.Prepared:
        """Validate a PredictRequest against its signature (serving/core/validation.py); return
        (signature, inputs, outputs). `arrays` replaces request.inputs when the caller (REST)
        has decoded them already."""
        return validation.prepare(loaded.name, loaded.version, loaded.signatures, request,
                                  arrays, self.max_request_elements)

    async def run(self, loaded: LoadedVersion, sig, inputs, outputs) -> dict[str, np.ndarray]:
        """Every inference of every protocol comes here: it is noted in the access log."""
        rows = next(iter(inputs.values())).shape[0] if inputs else 1
        access_log.note(model=loaded.name, version=loaded.version, rows=rows)
        request = _REQUEST.get()
        if request is not None:
            request.run_asked = time.perf_counter_ns()
        result = await self._run(loaded, sig, inputs, outputs, rows)
        if request is not None:
            request.ran, request.rows = time.perf_counter_ns(), rows
        access_log.note_payload(inputs, result)
        return result

    async def _run(self, loaded: LoadedVersion, sig, inputs, outputs, rows: int
                   ) -> dict[str, np.ndarray]:
        if rows == 0 and all(s.shape and s.shape[0] == -1 for s in sig.outputs.values()):
            names = outputs or list(sig.outputs)
            return {k: np.zeros([0, *[max(d, 0) for d in sig.outputs[k].shape[1:]]],
                                sig.outputs[k].np_dtype) for k in names}
        batcher = loaded.batchers.get(sig.name)
        try:
            if batcher is not None:
                times: list[tuple[float, float]] = []  # (run began, ended) of each part
                submitted = time.monotonic()
                result = await batcher.submit(inputs, times)
                began = min(b for b, _ in times)
                self._ran(loaded, int((began - submitted) * 1e9),
                          int((max(e for _, e in times) - began) * 1e9))
                return {k: result[k] for k in (outputs or result)}
            submitted = time.perf_counter()
            if loaded.inline and rows <= 8:
                result = loaded.backend.run(sig.name, inputs, outputs)
                began = submitted
            else:
                def timed():
                    start = time.perf_counter()
                    return loaded.backend.run(sig.name, inputs, outputs), start

                result, began = await asyncio.get_running_loop().run_in_executor(
                    self.executor, timed)
            ran = time.perf_counter() - began
            self.metrics.run(loaded.name, loaded.version, sig.name, began - submitted, ran)
            self._ran(loaded, int((began - submitted) * 1e9), int(ran * 1e9))
            loaded.statistics.execution(rows, int(ran * 1e9))
            return result
        except QueueFull as e:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        except BatchTooLarge as e:
            raise invalid(str(e)) from None
        except ServingError:
            raise
        except Exception as e:  # noqa: BLE001 - runtime errors become INVALID_ARGUMENT/INTERNAL
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            if "InvalidArgument" in type(e).__name__ or "INVALID_ARGUMENT" in str(e):
                raise invalid(msg) from None
            raise ServingError(grpc.StatusCode.INTERNAL, msg) from None

    @staticmethod
    def _ran(loaded: LoadedVersion, queue_ns: int, infer_ns: int) -> None:
        """A run's queue and infer time: kept for the end of the request `serve` times, or
        counted now for a run outside one."""
        request = _REQUEST.get()
        if request is not None:
            request.queue_ns, request.infer_ns = queue_ns, infer_ns
        else:
            loaded.statistics.ran(queue_ns, infer_ns)

    # ---------------------------------------------------------------- the lifecycle
    async def load(self, config: model_server_config_pb2.ModelServerConfig | None) -> None:
        """Start: load `config`, or what the discovery root holds when it is None."""
        if config is not None:
            await self.lifecycle.set_config(config)
        else:
            await self.lifecycle.poll()

    async def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: `config` replaces the whole configuration, and discovery."""
        self.lifecycle.discover_root = None
        await self.lifecycle.set_config(config)

    async def set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        await self.lifecycle.set_config(config)

    async def poll(self) -> None:
        await self.lifecycle.poll()

    async def poll_forever(self) -> None:
        await self.lifecycle.poll_forever()

    async def drain(self) -> None:
        await self.lifecycle.drain()

    async def close(self) -> None:
        await self.lifecycle.close()
        self.executor.shutdown(wait=False)
