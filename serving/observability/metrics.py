"""The server's Prometheus metrics, kept and rendered by prometheus_client.

TF Serving's own series, with its names, labels and units (tensorflow/serving
`servables/tensorflow/util.cc` and `batching/batching_session.cc`; its exporter turns "/" into
":"), so that dashboards and alerts written for `tensorflow_model_server` work unchanged:

- `:tensorflow:serving:request_count{model_name, status}` counter: every Predict, gRPC or REST,
  under the gRPC code it was answered with (OK, NOT_FOUND, INVALID_ARGUMENT, ...).
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}` histogram in microseconds,
  TF Serving's buckets (10 us x 1.8^i, 33 of them), successful requests only, as TF Serving:
  API "Predict" with entrypoint "GRPC", API "predict" with entrypoint "REST".
- `:tensorflow:serving:batching_session:queuing_latency{thread_pool_name}` histogram in
  microseconds (100 us x 1.2^i, 52 buckets): each batched request's wait for its batch, under
  "model_server_batch_threads" (the name TF Serving gives its one batch thread pool).
- `:tensorflow:serving:batching_session:wrapped_run_count` counter: batches run.

TF Serving writes its counters without the `_total` suffix prometheus_client adds, so the two
TF counters are renamed back in the exposition text.

Ours, with Prometheus' conventions (seconds, `_total`), labelled model, version and signature:
- `zoo_serving_queue_seconds` histogram: how long a request waited before its model run began
  (in a batching queue, or for an inference thread).
- `zoo_serving_compute_seconds` histogram: how long the model ran for a request (a batched
  request reports the run of its whole batch).
- `zoo_serving_batch_size` histogram: rows in each batch run, after padding.
- `zoo_serving_batch_queue_rows` gauge: rows waiting in each batching queue.
- `zoo_serving_worker_requests_total{worker}` counter, with --workers only: the Predicts each
  worker answered, to see how the kernel spread connections over them.
- `zoo_serving_worker_restarts_total{worker}` counter, with --workers only: how often the
  supervisor restarted each worker after it died (each restarted process adds its 1; the dead
  ones' counts stay in the shared files).

**Only served names become labels.** A request naming a model that is not served is counted
under model_name="(unknown)" (a fixed placeholder), so bogus names cannot grow the page. The
version and signature labels are only ever set from a loaded version, after validation.

**--workers.** When PROMETHEUS_MULTIPROC_DIR is set (the supervisor sets it to a private
temporary directory, see supervisor.py), prometheus_client's multiprocess mode is used: each worker
writes its values to memory-mapped files there, and a scrape on any worker reads every worker's
files and returns the sums (counters and histograms added up, the queue gauge summed over the
workers alive). prometheus_client chooses this mode when it is imported, from that variable.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNKNOWN_MODEL = "(unknown)"
BATCH_THREAD_POOL = "model_server_batch_threads"


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TF's monitoring::Buckets::Exponential bounds, printed as TF prints them (6 digits)."""
    return tuple(float(f"{scale * growth ** i:.6g}") for i in range(count))


REQUEST_LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)     # microseconds, ~24 minutes
QUEUING_LATENCY_BUCKETS = exponential_buckets(100, 1.2, 52)    # microseconds, ~1.3 seconds
SECONDS_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUEST_COUNT = ":tensorflow:serving:request_count"
WRAPPED_RUN_COUNT = ":tensorflow:serving:batching_session:wrapped_run_count"
# prometheus_client names a counter's samples NAME_total; TF Serving's have no suffix.
_TF_COUNTER_LINES = re.compile(
    r"^(# (?:HELP|TYPE) )?(" + "|".join(map(re.escape, (REQUEST_COUNT, WRAPPED_RUN_COUNT)))
    + r")_total(?=[ {])", re.M)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The metrics of one server process. `served(name)` says whether a model name is served
    (the lifecycle sets it); `worker` is this process's index in a --workers server."""

    def __init__(self, served: Callable[[str], bool] | None = None, worker: int | None = None,
                 restarted: bool = False):
        self.served = served or (lambda name: False)
        self.pullers: list[Callable[[], Awaitable[None]]] = []  # see refresh()
        self.worker = None if worker is None else str(worker)
        self.multiprocess = multiprocess_dir()
        if self.multiprocess:
            if not getattr(_values.ValueClass, "_multiprocess", False):
                raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was "
                                   "imported: set it in the environment the process starts with")
            # The metrics write to the shared files; a scrape reads all of them.
            self.registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.registry, self.multiprocess)
            own = None
        else:
            self.registry = own = CollectorRegistry(auto_describe=True)
        self.request_count = Counter(
            REQUEST_COUNT, "The total number of requests.", ["model_name", "status"],
            registry=own)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=REQUEST_LATENCY_BUCKETS, registry=own)
        self.queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ["thread_pool_name"], buckets=QUEUING_LATENCY_BUCKETS, registry=own)
        self.wrapped_run_count = Counter(
            WRAPPED_RUN_COUNT, "Total count of run calls on the wrapped session", registry=own)
        labels = ["model", "version", "signature"]
        self.queue_seconds = Histogram(
            "zoo_serving_queue_seconds", "Time a request waited before its model run began "
            "(batching queue or inference thread pool).", labels, buckets=SECONDS_BUCKETS,
            registry=own)
        self.compute_seconds = Histogram(
            "zoo_serving_compute_seconds", "Time the model ran for a request (a batched request "
            "reports its whole batch's run).", labels, buckets=SECONDS_BUCKETS, registry=own)
        self.batch_size = Histogram(
            "zoo_serving_batch_size", "Rows in each batch run (after padding).", labels,
            buckets=BATCH_BUCKETS, registry=own)
        self.queue_rows = Gauge(
            "zoo_serving_batch_queue_rows", "Rows waiting in a batching queue.", labels,
            multiprocess_mode="livesum", registry=own)
        self.worker_requests = None
        if self.worker is not None:
            self.worker_requests = Counter(
                "zoo_serving_worker_requests", "Predict requests answered by each worker.",
                ["worker"], registry=own).labels(self.worker)
            restarts = Counter(
                "zoo_serving_worker_restarts", "Times the supervisor restarted each worker after "
                "it died.", ["worker"], registry=own).labels(self.worker)
            if restarted:
                restarts.inc()
        # Children by label values: prometheus_client's labels() checks and locks on every call.
        self._children: dict[tuple, object] = {}
        self._batch_wait = self.queuing_latency.labels(BATCH_THREAD_POOL)

    def _child(self, metric, *values):
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def model_label(self, name: str) -> str:
        return name if self.served(name) else UNKNOWN_MODEL

    # ------------------------------------------------------------------ recording
    async def refresh(self) -> None:
        """Before a scrape (and a statistics call): pull what other processes answered (the
        native data plane's calls, serving/native/plane.py) into these metrics and the
        versions' statistics."""
        for pull in self.pullers:
            await pull()

    def request(self, model: str, api: str, entrypoint: str, code: str, seconds: float) -> None:
        """One answered request: counted under its code; its latency if it succeeded."""
        model = self.model_label(model)
        self._child(self.request_count, model, code).inc()
        if code == "OK":
            self._child(self.request_latency, model, api, entrypoint).observe(seconds * 1e6)
        if self.worker_requests is not None:
            self.worker_requests.inc()

    @contextlib.contextmanager
    def track(self, model: str, api: str, entrypoint: str, unexpected: str = "UNKNOWN"):
        """Count the request run inside the block: OK, the code of the exception it raised
        (anything with a grpc.StatusCode `code`, e.g. ServingError), CANCELLED if it was
        cancelled, or `unexpected` for any other exception."""
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except Exception as e:
            status = getattr(e, "code", None)
            code = status.name if isinstance(status, grpc.StatusCode) else unexpected
            raise
        except BaseException:  # asyncio.CancelledError: the client went away
            code = "CANCELLED"
            raise
        finally:
            self.request(model, api, entrypoint, code, time.perf_counter() - started)

    def run(self, model: str, version: int, signature: str, queue_seconds: float,
            compute_seconds: float) -> None:
        """An unbatched model run for one request."""
        key = (model, str(version), signature)
        self._child(self.queue_seconds, *key).observe(queue_seconds)
        self._child(self.compute_seconds, *key).observe(compute_seconds)

    def batch(self, model: str, version: int, signature: str, size: int) -> None:
        """A batch of `size` rows (after padding) starts."""
        self._child(self.batch_size, model, str(version), signature).observe(size)
        self.wrapped_run_count.inc()

    def batch_run(self, model: str, version: int, signature: str, waits: list[float],
                  compute_seconds: float) -> None:
        """A batch ran for `compute_seconds`; `waits` are its requests' seconds in the queue."""
        key = (model, str(version), signature)
        queue, compute = self._child(self.queue_seconds, *key), self._child(
            self.compute_seconds, *key)
        for wait in waits:
            queue.observe(wait)
            compute.observe(compute_seconds)
            self._batch_wait.observe(wait * 1e6)

    def batch_queue(self, model: str, version: int, signature: str, rows: int) -> None:
        self._child(self.queue_rows, model, str(version), signature).set(rows)

    def forget_queue(self, model: str, version: int, signature: str) -> None:
        """A batching queue closed (its version unloaded): its gauge goes."""
        key = (model, str(version), signature)
        self._child(self.queue_rows, *key).set(0)  # what other workers read, in multiprocess
        self._children.pop((id(self.queue_rows), *key), None)
        with contextlib.suppress(KeyError):
            self.queue_rows.remove(*key)

    # ------------------------------------------------------------------ exposition
    def render(self) -> str:
        """Prometheus text format 0.0.4 (every worker's sums in a --workers server)."""
        text = generate_latest(_WithoutCreated(self.registry)).decode()
        return _TF_COUNTER_LINES.sub(r"\1\2", text)


class _WithoutCreated:
    """The registry's metrics without the `_created` timestamps that prometheus_client adds to
    counters and histograms in a single process (TF Serving has none; neither has multiprocess
    mode): one series fewer per label set."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for metric in self.registry.collect():
            suffix = metric.name + "_created"
            metric.samples = [s for s in metric.samples if s.name != suffix]
            yield metric
