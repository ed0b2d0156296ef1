"""The native data plane's control side (docs/ARCHITECTURE.md, "The native data plane"): starts
build/native/predictd on the server's public gRPC port, in front of the Python gRPC server on a
loopback port, tells it which SavedModel versions the lifecycle has made available (and which it
has unloaded), restarts it if it dies, and stops it with the server. predictd answers Predict
and the Open Inference Protocol's ModelInfer (and its ServerLive, ServerReady, ModelReady) for
those versions and forwards everything else to the Python server; it never decides which
versions exist. Its answers reach the metrics and the versions' statistics through `stats`.

The channel is predictd's stdin and stdout, one tab-separated line each (the format is in
serving/native/src/predictd.cc). The lifecycle is read every `SYNC_SECONDS`: a version is told to
predictd after the Python plane serves it, so until predictd has loaded it the Python plane
answers for it; a version the Python plane stops serving is forwarded again from the next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import grpc

from serving.runtime import tensors

log = logging.getLogger("serving")

# build/native/predictd of this checkout (make native), or $ZOO_PREDICTD where an install put it
# elsewhere (the Dockerfile's zoo-server image).
BINARY = Path(os.environ.get("ZOO_PREDICTD") or
              Path(__file__).resolve().parents[2] / "build" / "native" / "predictd").resolve()
SYNC_SECONDS = 0.2
PLANES = ("auto", "native", "python")
CODES = {c.value[0]: c.name for c in grpc.StatusCode}
# The gRPC methods of predictd's stats rows (it names them by their last part).
METHODS = {"Predict": "/tensorflow.serving.PredictionService/Predict",
           "ModelInfer": "/inference.GRPCInferenceService/ModelInfer"}


def built() -> bool:
    return BINARY.is_file() and os.access(BINARY, os.X_OK)


def unsupported(args) -> str | None:
    """Why the native plane cannot serve a server with these options, or None if it can."""
    if not built():
        return f"{BINARY} is not built (make native; needs g++, libgrpc++-dev, " \
               "protobuf-compiler-grpc, libprotobuf-dev)"
    for flag, value in (("--backend onnx", args.backend != "savedmodel"),
                        ("--ssl_config_file", args.ssl_config_file),
                        # predictd keeps no tensors for the payload log
                        ("--payload_log_sample_rate", args.payload_log_sample_rate),
                        ("--workers", args.workers > 1)):
        if value:
            return f"the native plane does not do {flag} yet"
    return None


def predictd_of(parent: int) -> int | None:
    """The pid of process `parent`'s predictd child, if it has one now (tests, benchmarks)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if Path(f"/proc/{pid}/exe").resolve(strict=True) == BINARY:
                    return int(pid)
            except OSError:  # a child that is exiting (a zombie has no exe)
                continue
    return None


def tf_library() -> str:
    import tensorflow as tf

    return str(Path(tf.sysconfig.get_lib()) / "libtensorflow_cc.so.2")


def _clean(text: str) -> str:
    """A field of a control line: no tab or newline may end it early."""
    return text.replace("\t", " ").replace("\n", " ")


def batching_argv(batching) -> list[str]:
    """predictd's flags for the Python plane's BatchingOptions (None: no batching). The
    parameters are read and checked once, by the Python plane (--batching_parameters_file)."""
    if batching is None:
        return []
    argv = ["--max_batch_size", str(batching.max_batch_size),
            "--batch_timeout_micros", str(batching.batch_timeout_micros),
            "--max_enqueued_batches", str(batching.max_enqueued_batches),
            "--num_batch_threads", str(batching.num_batch_threads)]
    if batching.allowed_batch_sizes:
        argv += ["--allowed_batch_sizes", ",".join(map(str, batching.allowed_batch_sizes))]
    return argv


def native_signature(sig) -> bool:
    """Whether predictd decodes every tensor of a signature (else its requests are forwarded)."""
    return all(s.dtype in tensors.DTYPES for s in (*sig.inputs.values(), *sig.outputs.values()))


def load_lines(loaded) -> list[str]:
    """The "load" command for a LoadedVersion: its path and every signature as the Python plane
    checks it (input order, dtypes, shapes, the describe() its messages quote)."""
    lines = [f"load\t{loaded.name}\t{loaded.version}\t{loaded.path}\t{len(loaded.signatures)}"]
    for name, sig in loaded.signatures.items():
        native = native_signature(sig)
        lines.append(f"sig\t{name}\t{int(native)}\t{_clean(sig.describe())}\t{len(sig.inputs)}"
                     f"\t{len(sig.outputs)}")
        for kind, specs, infos in (("in", sig.inputs, sig.proto.inputs),
                                   ("out", sig.outputs, sig.proto.outputs)):
            for alias, spec in specs.items():
                lines.append(f"{kind}\t{alias}\t{infos[alias].name}\t{spec.dtype}\t"
                             f"{','.join(map(str, spec.shape))}")
    return lines


def auth_lines(guard) -> list[str]:
    """The "auth" command: the tokens of an auth.Guard and its refusals of a Predict with no
    authorization value, a wrong one and two, so that predictd answers with its code and words
    (serving/native/src/auth.h). No tokens: no auth."""
    tokens = guard.tokens if guard is not None else ()
    refusals = []
    for metadata in ((), (("authorization", ""),),
                     (("authorization", "Bearer"), ("authorization", "Bearer"))):
        code, message = (guard.grpc_refusal(METHODS["Predict"], metadata) if tokens
                         else (grpc.StatusCode.UNAUTHENTICATED, ""))
        refusals += [str(code.value[0]), _clean(message)]
    return [f"auth\t{len(tokens)}\t" + "\t".join(refusals), *(f"token\t{t}" for t in tokens)]


class NativePlane:
    """predictd on `host:port`, forwarding to the Python gRPC server on 127.0.0.1:`forward_port`;
    `await start()` returns the bound port (port 0 picks one, kept across restarts)."""

    def __init__(self, core, host: str, port: int, forward_port: int, max_request_bytes: int,
                 max_request_elements: int, intra_op: int = 0, inter_op: int = 0,
                 batching=None, access=None, guard=None):
        self.core, self.host, self.port = core, host, port
        self.guard = guard  # the server's auth.Guard: its tokens go to predictd (set_guard)
        self.access = access  # the server's AccessLog (or None): a line per call predictd answers
        self.forward_port = forward_port
        self.argv = ["--forward", f"127.0.0.1:{forward_port}", "--tf_library", tf_library(),
                     "--max_request_bytes", str(max_request_bytes),
                     "--max_request_elements", str(max_request_elements),
                     "--intra_op", str(intra_op), "--inter_op", str(inter_op),
                     *batching_argv(batching)]
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.told: dict[tuple[str, int], object] = {}  # (model, version) -> LoadedVersion
        self.failed: dict[tuple[str, int], str] = {}   # what predictd could not load, and why
        self._available: dict[str, list[int]] = {}
        self._ready: bool | None = None  # what predictd's ServerReady answers
        self._watch: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> int:
        self.core.metrics.pullers.append(self.pull_stats)
        await self._spawn()
        await self.sync()
        self._watch = asyncio.get_running_loop().create_task(self._watch_forever())
        return self.port

    async def _spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(BINARY), "--listen", f"{self.host}:{self.port}", *self.argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        first = (await self.process.stdout.readline()).decode().rstrip("\n").split("\t")
        if first[0] != "listening":
            code = await self.process.wait()
            raise RuntimeError(f"predictd did not start (exit code {code}; see its message "
                               "above)")
        self.port = int(first[1])
        # The tokens before any version: until predictd has loaded one, it forwards every call
        # to the Python plane, which checks them.
        if self.guard is not None and self.guard.tokens:
            answer = await self._command(auth_lines(self.guard))
            if answer[0] != "ok":  # never a predictd that would answer without them
                self.process.kill()
                await self.process.wait()
                raise RuntimeError(f"predictd refused the tokens: {answer[-1]}")
        self.told.clear()
        self.failed.clear()
        self._available.clear()
        self._ready = None

    async def _command(self, lines: list[str]) -> list[str]:
        """Send one command; its answer's fields."""
        self.process.stdin.write("".join(f"{line}\n" for line in lines).encode())
        await self.process.stdin.drain()
        answer = await self.process.stdout.readline()
        if not answer:
            raise ConnectionError("predictd is gone")
        return answer.decode().rstrip("\n").split("\t")

    async def sync(self) -> None:
        """Tell predictd what the lifecycle serves now: loads first, then the available
        versions, then unloads (so a request never finds the list ahead of the loads)."""
        async with self._lock:
            models = self.core.lifecycle.models
            now = {(name, v): loaded for name, state in models.items()
                   for v, loaded in state.available.items()}
            for key, loaded in now.items():
                if self.told.get(key) is loaded or key in self.failed:
                    continue
                answer = await self._command(load_lines(loaded))
                if answer[0] == "ok":
                    self.told[key] = loaded
                    log.info("model %s version %d: gRPC Predict is answered by the native "
                             "plane", *key)
                else:
                    self.failed[key] = answer[-1]
                    log.warning("model %s version %d is served by the Python plane: predictd "
                                "cannot load it: %s", *key, answer[-1])
            available = {name: sorted(v for (n, v) in now if n == name) for name in models}
            for name in set(available) | set(self._available):
                versions = available.get(name, [])
                if self._available.get(name) != versions:
                    await self._command([f"available\t{name}\t{','.join(map(str, versions))}"])
                    self._available[name] = versions
            ready = self.core.ready()  # DataPlane.ready(); the stop says 0 before it quits
            if ready != self._ready:
                await self._command([f"ready\t{int(ready)}"])
                self._ready = ready
            for key in [k for k in self.told if k not in now]:
                await self._command([f"unload\t{key[0]}\t{key[1]}"])
                del self.told[key]
            for key in [k for k in self.failed if k not in now]:
                del self.failed[key]

    async def pull_stats(self) -> None:
        """The calls predictd answered since the last pull, into the Python plane's metrics
        (the one Prometheus page), its versions' statistics (Triton's ModelStatistics) and its
        access log; a scrape and a statistics call pull first."""
        async with self._lock:
            if self.process is None or self.process.returncode is not None:
                return
            try:
                answer = await self._command(["stats"])
                rows, batches, queues = await self._stats(answer)
            except (ConnectionError, BrokenPipeError):
                return
        self._take(rows, batches, queues)

    async def _line(self) -> list[str]:
        return (await self.process.stdout.readline()).decode().rstrip("\n").split("\t")

    async def _stats(self, answer: list[str]):
        """The rest of a stats answer: the answered calls' rows, the batches, the queues."""
        if answer[:2] != ["ok", "stats"]:
            raise ConnectionError(f"predictd answered {answer!r} to stats")
        rows = [await self._line() for _ in range(int(answer[2]))]
        head = await self._line()  # the batcher's part: batches M Q
        batches = [await self._line() for _ in range(int(head[1]))]
        queues = [await self._line() for _ in range(int(head[2]))]
        return rows, batches, queues

    def _take(self, rows, batches, queues) -> None:
        """Stats rows (serving/native/src/predictd.cc) as the Python plane counts and logs its
        own calls: one it did not parse or that was refused before it is counted in no metric
        (model empty); a version's statistics get the calls answered for it (version > 0); the
        access log has no version or rows for one that was not run (INPUT_NS -1)."""
        for row in rows:
            model, version, method, code, seconds, n, peer = row[:7]
            ns, input_ns, queue_ns, infer_ns, output_ns, executed, end_ms = map(int, row[7:14])
            status, seconds = CODES[int(code)], float(seconds)
            if model:
                self.core.metrics.request(model, method, "GRPC", status, seconds)
                stats = self.core.statistics(model).get(int(version))  # None: not resolved, gone
                if stats is not None:
                    stats.answered(code == "0", ns, int(n),
                                   None if input_ns < 0 else (input_ns, queue_ns, infer_ns,
                                                              output_ns),
                                   executed, end_ms)
            if self.access is not None:
                ran = input_ns >= 0
                self.access.answered(end_ms / 1000, METHODS.get(method, method), model or None,
                                     int(version) if ran else None, int(n) if ran else None,
                                     status, seconds, peer or None)
        self._batch_stats(batches, queues)
    def _batch_stats(self, batches: list[list[str]], queues: list[list[str]]) -> None:
        """predictd's batches into the metrics the Python plane's batching reports
        (lifecycle._make_batcher: batch size, queuing latency, compute, the version's
        statistics) and its queues' rows into the queue gauge (with the Python plane's own
        queue for the version, which answers what predictd forwards)."""
        m = self.core.metrics
        for model, version, sig, size, _rows, seconds, ok, waits in batches:
            m.batch(model, int(version), sig, int(size))
            m.batch_run(model, int(version), sig, [float(w) for w in waits.split(",")],
                        float(seconds))
            loaded = self.told.get((model, int(version)))
            if ok == "1" and loaded is not None:
                loaded.statistics.execution(int(size), int(float(seconds) * 1e9))
        for model, version, sig, rows in queues:
            loaded = self.told.get((model, int(version)))
            own = loaded.batchers.get(sig) if loaded is not None else None
            m.batch_queue(model, int(version), sig, int(rows) + (own.queued_rows if own else 0))

    async def set_guard(self, guard) -> None:
        """New tokens (a reloaded token file): sent to predictd now, and after a restart."""
        self.guard = guard
        async with self._lock:
            if self.process is not None and self.process.returncode is None:
                answer = await self._command(auth_lines(guard))
                if answer[0] != "ok":
                    raise RuntimeError(f"predictd refused the tokens: {answer[-1]}")

    def serves(self, name: str, version: int) -> bool:
        """Whether predictd answers this version's Predict and ModelInfer (else the Python
        plane does)."""
        return (name, version) in self.told

    def plane_of(self, name: str, version: int) -> tuple[str, str]:
        """("native" or "python", why): which plane answers this version's gRPC Predict, and
        what of it (or why not) predictd does not answer (ServerCore.data_plane)."""
        loaded = self.told.get((name, version))
        if loaded is not None:
            python = [n for n, sig in loaded.signatures.items() if not native_signature(sig)]
            if not python:
                return "native", ""
            return "native", (f"signature{'s' * (len(python) > 1)} {', '.join(python)} on the "
                              "Python plane: a dtype predictd does not decode")
        why = self.failed.get((name, version))
        if why is not None:
            return "python", f"predictd cannot load it: {why}"
        return "python", "not loaded by predictd yet"

    async def _watch_forever(self) -> None:
        while True:
            try:
                await asyncio.sleep(SYNC_SECONDS)
                if self.process.returncode is None:
                    await self.sync()
                    await self.pull_stats()
                    continue
            except (ConnectionError, BrokenPipeError):
                pass
            code = await self.process.wait()
            self.restarts += 1
            log.error("predictd exited (code %s); restarting it on port %d", code, self.port)
            try:
                await self._spawn()
                await self.sync()
            except (RuntimeError, ConnectionError, BrokenPipeError, OSError) as e:
                log.error("predictd did not restart: %s", e)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.core.metrics.pullers.remove(self.pull_stats)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        p = self.process
        if p is None or p.returncode is not None:
            self.process = None
            return
        # ready 0, then quit: predictd lets its calls in flight finish, then answers with their
        # stats.
        with contextlib.suppress(BrokenPipeError, ConnectionError, ValueError, TimeoutError):
            async with asyncio.timeout(10):
                async with self._lock:
                    await self._command(["ready\t0"])
                    answer = await self._command(["quit"])
                    self._take(*await self._stats(answer))
        self.process = None
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            p.kill()
            await p.wait()
