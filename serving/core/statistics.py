"""What each loaded version has done since it was loaded: the counts and cumulative times of
Triton's statistics extension (docs/ARCHITECTURE.md, "Open Inference Protocol"), kept by the
core for every inference of every protocol; the Open Inference protocol words them.

The phases of one request, as the core times them (`ServerCore.serve` and `ServerCore.run`,
perf_counter_ns on the event loop, a few calls a request):
- success / fail: the whole request, from its version being resolved to its end (the protocol's
  response built), by how it ended.
- compute_input: from the version resolved to the run being asked for: checking the request and
  decoding its tensors (any protocol, any transport).
- queue: waiting for a batch, or for an inference thread.
- compute_infer: the model run (a batched request counts its whole batch's run, as Triton does;
  one split over several batches, from its first part's run to its last one's end).
- compute_output: from the run's end to the request's end: a batch split back, and the response
  built from the outputs.
An execution is one model run (a batch, or one unbatched request), counted by its row count in
`batches` (their compute_infer). Each process keeps its own: with --workers, a call reads the
worker it reached.
"""

from __future__ import annotations

import time


class Duration:
    """A count and a total in nanoseconds (Triton's StatisticDuration)."""

    __slots__ = ("count", "ns")

    def __init__(self):
        self.count = self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


class VersionStatistics:
    __slots__ = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                 "inference_count", "execution_count", "last_inference_ms", "batches")

    def __init__(self):
        for name in ("success", "fail", "queue", "compute_input", "compute_infer",
                     "compute_output"):
            setattr(self, name, Duration())
        self.inference_count = self.execution_count = self.last_inference_ms = 0
        self.batches: dict[int, Duration] = {}  # batch size -> its runs (compute_infer)

    def request(self, ok: bool, ns: int, rows: int) -> None:
        """A request ended; a successful one counts its rows as inferences."""
        (self.success if ok else self.fail).add(ns)
        if ok:
            self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def answered(self, ok: bool, ns: int, rows: int, phases: tuple[int, int, int, int] | None,
                 executed: int, at_ms: int) -> None:
        """A request another process answered (the native data plane's stats line,
        serving/native/plane.py), as `ServerCore.serve` counts its own: its phases
        (compute_input, queue, compute_infer, compute_output ns; None: it did not run to its
        end), the rows of the model run it counts as an execution (0: none), its end (Unix ms)."""
        if phases is not None:
            self.compute_input.add(phases[0])
            self.ran(phases[1], phases[2])
            self.compute_output.add(phases[3])
        if executed:
            self.execution(executed, phases[2] if phases else 0)
        self.request(ok, ns, rows if ok else 0)
        self.last_inference_ms = at_ms

    def execution(self, size: int, infer_ns: int) -> None:
        """One model run of `size` rows."""
        self.execution_count += 1
        batch = self.batches.get(size)
        if batch is None:
            batch = self.batches[size] = Duration()
        batch.add(infer_ns)

    def ran(self, queue_ns: int, infer_ns: int) -> None:
        """A request's wait before its model work began, and that work's time."""
        self.queue.add(queue_ns)
        self.compute_infer.add(infer_ns)
