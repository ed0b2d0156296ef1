"""Which models and versions are served: the version lifecycle (TF Serving's ServerCore and
AspiredVersionsManager; docs/ARCHITECTURE.md, "Serving").

A `Lifecycle` holds a `ModelServerConfig` (from --model_config_file, --model_name/--model_base_path,
or a reload request, which replaces the whole config as in TF Serving), polls each base path every
`--file_system_poll_wait_seconds` for numbered version directories (serving/repository/versions.py:
hidden or non-numeric names are ignored, as TF Serving ignores them; a name that looks like a number
but is no version, such as `007`, `²` or one beyond int64, is ignored with one warning), and applies
the version policy (latest N by default, all, specific). A listing that fails (permissions, missing
base path, out of file descriptors) changes nothing: what is loaded stays loaded and the error is
logged, as TF Serving's file-system source does. A new version is loaded and warmed with its
`assets.extra/tf_serving_warmup_requests` before it takes traffic. A version leaving the policy
stops taking new requests at once and is unloaded when its in-flight requests are done, and only
once a replacement is available (availability first, like TF Serving's
AvailabilityPreservingPolicy). Each version is checked against its certificate (metadata.json,
serving/repository/certificate.py) before it is loaded. A version that fails to verify, load or warm
up (serving/repository/warmup.py) is reported (GetModelStatus: END with the error) and skipped; it
is retried only when its directory changes, so a half-written version is picked up once it is
complete.

ServerCore (serving/core/server_core.py) has a Lifecycle and answers requests against the loaded
versions; what status and metadata say about them is each protocol's (TF Serving's:
serving/protocols/tf_serving/dataplane.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.core import limits, validation
from serving.core.batching import Batcher, BatchingOptions
from serving.core.errors import ServingError, invalid
from serving.core.statistics import VersionStatistics
from serving.observability.metrics import Metrics
from serving.repository import certificate, protos, versions
from serving.repository.warmup import read_warmup_records
from serving.runtime import backends

log = logging.getLogger("serving")
State = get_model_status_pb2.ModelVersionStatus.State
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


class LoadedVersion:
    """One loaded version: its backend, batchers and in-flight request count."""

    def __init__(self, name: str, version: int, path: Path, backend):
        self.name, self.version, self.path, self.backend = name, version, path, backend
        self.signatures = backend.signatures
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.batchers: dict[str, Batcher] = {}
        self.inline = False  # run on the event loop: cheaper than a thread hop for tiny models
        self.inline_batches = False  # the same for a full batch (max_batch_size rows)
        self.statistics = VersionStatistics()  # since it was loaded (Triton's statistics)

    def acquire(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


class ModelState:
    def __init__(self, config: model_server_config_pb2.ModelConfig):
        self.config = config
        self.available: dict[int, LoadedVersion] = {}
        # version -> (state, error message); what GetModelStatus reports
        self.status: dict[int, tuple[int, str]] = {}
        self.failed: dict[int, tuple] = {}  # version -> directory fingerprint at failure
        self.loading: set[int] = set()
        self.listing_error: str | None = None  # why the last listing of base_path failed


# Characters a model name may not hold: REST's /v1/models/NAME[:verb] could not address it.
UNADDRESSABLE = ("/", ":")


def fingerprint(path: Path) -> tuple:
    try:
        return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in path.rglob("*")))
    except OSError:
        return ()


class Lifecycle:
    """The served models' versions: configuration, polling, loading, warmup and unloading."""

    def __init__(self, backend: str = "savedmodel", batching: BatchingOptions | None = None,
                 poll_seconds: float = 1.0, metrics: Metrics | None = None,
                 discover_root: Path | None = None, inline_threshold: float = 200e-6,
                 intra_op_threads: int = 0, inter_op_threads: int = 0,
                 require_certificates: bool = False,
                 max_request_elements: int = limits.DEFAULT_MAX_REQUEST_ELEMENTS,
                 warmup: bool = True, allow_labels_for_unavailable: bool = False):
        self.backend_kind = backend
        # --allow_version_labels_for_unavailable_models (TF Serving's flag, default false)
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.warmup = warmup  # False: --enable_model_warmup=false, the warmup file is ignored
        self.max_request_elements = max_request_elements
        self.require_certificates = require_certificates
        self.runtime_threads = (intra_op_threads, inter_op_threads)
        self.inline_threshold = inline_threshold
        self.batching = batching
        self.poll_seconds = poll_seconds
        self.metrics = metrics or Metrics()
        self.models: dict[str, ModelState] = {}
        # Metrics label only the models served (configured or discovered), never a name a
        # request made up.
        self.metrics.served = lambda name: name in self.models
        self.discover_root = discover_root
        self.batch_executor = ThreadPoolExecutor(
            batching.num_batch_threads if batching else 1, thread_name_prefix="batch")
        self.load_executor = ThreadPoolExecutor(1, thread_name_prefix="load")
        self._lock = asyncio.Lock()
        self._unloading: set[asyncio.Task] = set()
        self._warned_names: set[tuple[str, str]] = set()  # (base path, name) warned about
        self._root_error: str | None = None

    # ---------------------------------------------------------------- configuration and polling
    @staticmethod
    def check_config(config: model_server_config_pb2.ModelServerConfig) -> None:
        if config.WhichOneof("config") != "model_config_list":
            raise invalid("ModelServerConfig must hold a model_config_list (custom_model_config "
                          "is not supported)")
        seen = set()
        for m in config.model_config_list.config:
            if not m.name:
                raise invalid("a model config has no name")
            if any(c in m.name for c in UNADDRESSABLE):
                raise invalid(f"model name {m.name!r} cannot be addressed over REST "
                              "(/v1/models/NAME:predict): a name may not hold '/' or ':'")
            if m.name in seen:
                raise invalid(f"Illegal to list model {m.name} multiple times in config list")
            seen.add(m.name)
            if not m.base_path:
                raise invalid(f"model {m.name} has no base_path")
            if m.model_platform not in ("", "tensorflow"):
                raise invalid(f"model {m.name}: model_platform {m.model_platform!r} is not "
                              "supported (use \"tensorflow\")")

    async def set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Replace the whole configuration, load what it asks for, and unload what it drops."""
        self.check_config(config)
        async with self._lock:
            wanted = {m.name: m for m in config.model_config_list.config}
            for name in list(self.models):
                if name not in wanted:
                    state = self.models.pop(name)
                    for v in list(state.available):
                        self._unload(state, v)
            old_labels = {}
            for name, m in wanted.items():
                if name in self.models:
                    old_labels[name] = dict(self.models[name].config.version_labels)
                    self.models[name].config = m
                else:
                    self.models[name] = ModelState(m)
        await self.poll()
        self._check_labels(wanted, old_labels)

    def _check_labels(self, wanted: dict, old_labels: dict[str, dict[str, int]]) -> None:
        """As TF Serving's ServerCore, once the versions the config asks for have loaded: a
        label must name an available version (unless allow_labels_for_unavailable). If one
        does not, the models keep their previous labels and the config is refused."""
        if self.allow_labels_for_unavailable:
            return
        wrong = [(name, label, v) for name, m in wanted.items()
                 for label, v in sorted(m.version_labels.items())
                 if v not in self.models[name].available]
        if not wrong:
            return
        for name in {n for n, _, _ in wrong}:
            config = model_server_config_pb2.ModelConfig()
            config.CopyFrom(self.models[name].config)
            config.ClearField("version_labels")
            config.version_labels.update(old_labels.get(name, {}))
            self.models[name].config = config
        name, label, v = wrong[0]
        raise invalid(f"model {name}: version label {label!r} names version {v}, which is not "
                      "available; labels may name only available versions (TF Serving's "
                      "--allow_version_labels_for_unavailable_models lifts this)")

    async def poll(self) -> None:
        if self.discover_root is not None:
            try:
                config = protos.folder_config(self.discover_root)  # zoo extension
            except OSError as e:
                # Models are dropped only when their directories are seen to be gone.
                message = f"cannot list the model directory {self.discover_root}: {e}"
                if message != self._root_error:
                    log.error("%s; the models found before stay as they are", message)
                self._root_error = message
                config = None
            else:
                if self._root_error is not None:
                    log.info("the model directory %s can be listed again", self.discover_root)
                self._root_error = None
            names = ({m.name for m in config.model_config_list.config} if config is not None
                     else set(self.models))
            if names != set(self.models):
                async with self._lock:
                    for m in config.model_config_list.config:
                        self.models.setdefault(m.name, ModelState(m))
                    for name in set(self.models) - names:
                        state = self.models.pop(name)
                        for v in list(state.available):
                            self._unload(state, v)
        async with self._lock:
            states = list(self.models.items())
        await asyncio.gather(*[self._poll_model(name, s) for name, s in states])

    async def poll_forever(self) -> None:
        if self.poll_seconds <= 0:
            return
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a bad poll must not stop future polls
                log.exception("polling failed")

    @staticmethod
    def on_disk_versions(base: Path) -> dict[int, Path]:
        """The version directories under `base`; {} if it cannot be listed."""
        try:
            return versions.scan(base).versions
        except OSError:
            return {}

    def _list_versions(self, name: str, state: ModelState) -> dict[int, Path] | None:
        """The model's version directories, or None if its base path cannot be listed (logged
        when the error starts or changes; names that are no version are warned about once)."""
        base = Path(state.config.base_path)
        try:
            listing = versions.scan(base)
        except OSError as e:
            message = f"cannot list {base}: {e.strerror or e}"
            if message != state.listing_error:
                log.error("model %s: %s; its versions stay as they are until it can be listed",
                          name, message)
            state.listing_error = message
            return None
        if state.listing_error is not None:
            log.info("model %s: %s can be listed again", name, base)
            state.listing_error = None
        for entry, why in sorted(listing.ignored.items()):
            if (str(base), entry) not in self._warned_names:
                self._warned_names.add((str(base), entry))
                log.warning("model %s: %r in %s is not a version directory (%s); ignored", name,
                            entry, base, why)
        return listing.versions

    @staticmethod
    def policy_versions(config, on_disk: dict[int, Path]) -> set[int]:
        policy = config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return set(on_disk)
        if which == "specific":
            return {v for v in policy.specific.versions if v in on_disk}
        n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
        return set(sorted(on_disk)[-n:])

    async def _poll_model(self, name: str, state: ModelState) -> None:
        on_disk = self._list_versions(name, state)
        if on_disk is None:
            return
        aspired = self.policy_versions(state.config, on_disk)
        to_load = []
        for v in sorted(aspired):
            if v in state.available or v in state.loading:
                continue
            if v in state.failed and state.failed[v] == fingerprint(on_disk[v]):
                continue
            to_load.append(v)
        for v in to_load:
            state.loading.add(v)
            state.status[v] = (State.LOADING, "")
        results = await asyncio.gather(*[self._load(name, state, v, on_disk[v]) for v in to_load])
        del results
        # Unload versions outside the policy, but only once an aspired version is available,
        # unless the directory is gone from disk.
        aspired_ready = any(v in state.available for v in aspired)
        for v in list(state.available):
            if v not in aspired and (aspired_ready or v not in on_disk):
                self._unload(state, v)
        for v in list(state.status):
            if v not in on_disk and v not in state.available and v not in state.loading:
                if v in state.failed:  # never served, and its error was about files now gone
                    del state.status[v]
                elif state.status[v][0] != State.END:  # served: reported unloaded, as TF Serving
                    state.status[v] = (State.END, "")
                state.failed.pop(v, None)

    async def _load(self, name: str, state: ModelState, version: int, path: Path) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        backend, step = None, "load"
        try:
            # The certificate first: a version that does not match it is never loaded.
            cert = await loop.run_in_executor(self.load_executor, certificate.verify, path,
                                              self.require_certificates)
            backend = await loop.run_in_executor(
                self.load_executor, backends.load, self.backend_kind, path, *self.runtime_threads)
            loaded = LoadedVersion(name, version, path, backend)
            step = "warmup"
            warm = await loop.run_in_executor(self.load_executor, self._warmup, loaded)
        except Exception as e:  # noqa: BLE001 - whatever fails, the version ends with the reason
            if isinstance(e, ServingError):
                message = e.message
            elif isinstance(e, (backends.LoadError, certificate.CertificateError, OSError,
                                ValueError)):
                message = str(e)
            else:  # not foreseen: say what it was
                message = f"{type(e).__name__}: {e}"
            if step == "warmup" and WARMUP_FILE not in message:
                message = f"{WARMUP_FILE}: {message}"
            log.error("model %s version %d not loaded: %s", name, version, message)
            close = getattr(backend, "close", None)
            if close:
                close()
            state.loading.discard(version)
            state.failed[version] = fingerprint(path)
            state.status[version] = (State.END, message)
            return
        if self.batching:
            for sig_name, sig in loaded.signatures.items():
                if all(s.shape and s.shape[0] == -1 for s in sig.inputs.values()):
                    loaded.batchers[sig_name] = self._make_batcher(loaded, sig_name)
        state.loading.discard(version)
        state.failed.pop(version, None)
        if self.models.get(name) is not state:  # config changed while loading
            return
        state.available[version] = loaded
        # No certificate (a version exported by another tool): served, with a warning in status.
        warning = "" if cert else (f"served without a certificate: {path} has no "
                                   f"{certificate.FILENAME} (--require_certificates refuses it)")
        state.status[version] = (State.AVAILABLE, warning)
        if warning:
            log.warning("model %s version %d %s", name, version, warning)
        log.info("model %s version %d available (%s backend, %d warmup requests, %.1f s%s)",
                 name, version, self.backend_kind, warm, time.monotonic() - started,
                 ", small requests inline" if loaded.inline else "")
        if loaded.inline_batches:
            log.info("model %s version %d: batches run on the event loop", name, version)

    def _make_batcher(self, loaded: LoadedVersion, sig_name: str) -> Batcher:
        m, key, stats = self.metrics, (loaded.name, loaded.version, sig_name), loaded.statistics

        def on_run(waits: list[float], seconds: float, size: int, ok: bool) -> None:
            m.batch_run(*key, waits, seconds)
            if ok:
                stats.execution(size, int(seconds * 1e9))

        return Batcher(lambda inputs: loaded.backend.run(sig_name, inputs), self.batching,
                       None if loaded.inline_batches else self.batch_executor,
                       on_batch=lambda rows: m.batch(*key, rows), on_run=on_run,
                       on_queue=lambda rows: m.batch_queue(*key, rows))

    def _warmup(self, loaded: LoadedVersion) -> int:
        """Replay the version's warmup requests (synchronously, before it takes traffic)."""
        path = loaded.path / WARMUP_FILE
        if not self.warmup or not path.exists():
            return 0
        requests = read_warmup_records(path)
        small = []
        for request in requests:
            sig, inputs, outputs = validation.prepare(
                loaded.name, loaded.version, loaded.signatures, request, None,
                self.max_request_elements)
            rows = len(next(iter(inputs.values())))
            if rows:
                loaded.backend.run(sig.name, inputs, outputs)
            if 0 < rows <= 8:
                small.append((sig.name, inputs, outputs))
        # A version whose small requests take well under the cost of a thread hand-off is run
        # on the event loop itself (measured here, after warmup).
        if small and self.inline_threshold > 0:
            seconds = np.median([self._median_seconds(loaded, *r) for r in small])
            loaded.inline = float(seconds) < self.inline_threshold
            if loaded.inline and self.batching:
                sig_name, inputs, outputs = small[0]
                rows = self.batching.max_batch_size
                full = {k: np.resize(v, (rows, *v.shape[1:])) for k, v in inputs.items()}
                loaded.inline_batches = self._median_seconds(
                    loaded, sig_name, full, outputs) < self.inline_threshold
        return len(requests)

    @staticmethod
    def _median_seconds(loaded: LoadedVersion, sig_name, inputs, outputs, repeats=5) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            loaded.backend.run(sig_name, inputs, outputs)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    def _unload(self, state: ModelState, version: int) -> None:
        loaded = state.available.pop(version)
        state.status[version] = (State.UNLOADING, "")

        async def finish():
            await loaded.idle.wait()
            for sig_name, b in loaded.batchers.items():
                await b.close()
                self.metrics.forget_queue(loaded.name, loaded.version, sig_name)
            close = getattr(loaded.backend, "close", None)
            if close:
                close()
            if state.status.get(version, (None,))[0] == State.UNLOADING:
                state.status[version] = (State.END, "")
            log.info("model %s version %d unloaded", loaded.name, version)

        task = asyncio.get_running_loop().create_task(finish())
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def drain(self) -> None:
        """Wait for every unload in progress (used at shutdown and by tests)."""
        while self._unloading:
            await asyncio.gather(*list(self._unloading))

    async def close(self) -> None:
        for state in self.models.values():
            for loaded in state.available.values():
                for b in loaded.batchers.values():
                    await b.close()
        self.batch_executor.shutdown(wait=False)
        self.load_executor.shutdown(wait=False)
