"""Dynamic batching with TF Serving's `BatchingParameters` semantics.

Requests for one (model, version, signature) join a queue. A batch is run when a batch thread is
free and either `max_batch_size` rows are waiting or the oldest request has waited
`batch_timeout_micros`. A request never shares rows with another caller's result: outputs are
split back by row range and padding (to the next of `allowed_batch_sizes`, by repeating the first
row, as TF Serving pads) is stripped. When `max_enqueued_batches` full batches are already
waiting, a new request is refused at once with UNAVAILABLE instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time

import numpy as np


class QueueFull(RuntimeError):
    pass


class BatchTooLarge(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 1000            # TF Serving's defaults
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, p) -> BatchingOptions:
        d = cls()
        opts = cls(
            max_batch_size=p.max_batch_size.value if p.HasField("max_batch_size")
            else d.max_batch_size,
            batch_timeout_micros=p.batch_timeout_micros.value
            if p.HasField("batch_timeout_micros") else d.batch_timeout_micros,
            max_enqueued_batches=p.max_enqueued_batches.value
            if p.HasField("max_enqueued_batches") else d.max_enqueued_batches,
            num_batch_threads=p.num_batch_threads.value if p.HasField("num_batch_threads")
            else d.num_batch_threads,
            allowed_batch_sizes=tuple(p.allowed_batch_sizes))
        opts.check()
        return opts

    def check(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be >= 1")
        if self.batch_timeout_micros < 0:
            raise ValueError("batching parameter batch_timeout_micros must be >= 0")
        a = self.allowed_batch_sizes
        if a:
            if list(a) != sorted(set(a)) or a[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if a[-1] != self.max_batch_size:
                raise ValueError(f"the last allowed_batch_sizes entry ({a[-1]}) must equal "
                                 f"max_batch_size ({self.max_batch_size})")


class _Task:
    __slots__ = ("inputs", "rows", "future", "enqueued", "times")

    def __init__(self, inputs, rows, future, times):
        self.inputs, self.rows, self.future, self.times = inputs, rows, future, times
        self.enqueued = time.monotonic()


class Batcher:
    """One queue; `run(inputs) -> outputs` is a synchronous function run in `executor`, or on
    the event loop itself when `executor` is None (for models cheaper than a thread hand-off).
    Callbacks, for metrics: `on_batch(rows)` as a batch (padded) starts; `on_run(waits,
    seconds, rows, ok)` when it has run, with each request's seconds in the queue, the run's
    seconds, its rows (padded) and whether it succeeded;
    `on_queue(rows)` whenever the rows waiting change."""

    def __init__(self, run, options: BatchingOptions, executor, on_batch=None, on_run=None,
                 on_queue=None):
        self.run, self.options, self.executor, self.on_batch = run, options, executor, on_batch
        self.on_run, self.on_queue = on_run, on_queue
        self.tasks: collections.deque[_Task] = collections.deque()
        self.queued_rows = 0
        self._wake = asyncio.Event()   # set when the queue goes from empty to non-empty
        self._full = asyncio.Event()   # set when a full batch is waiting
        self._threads = asyncio.Semaphore(options.num_batch_threads)
        self._running: set[asyncio.Task] = set()
        self._loop_task = asyncio.get_running_loop().create_task(self._schedule())

    async def submit(self, inputs: dict[str, np.ndarray], times: list | None = None
                     ) -> dict[str, np.ndarray]:
        """The outputs of `inputs`' rows; `times` gets (run began, ended) of the batch that
        ran them (of each, for a request split over several), in time.monotonic() seconds."""
        rows = len(next(iter(inputs.values())))
        o = self.options
        if rows > o.max_batch_size:
            # Split, as TF Serving's large-batch splitting does; each part is queued on its own.
            parts = [await asyncio.gather(*[
                self.submit({k: v[i:i + o.max_batch_size] for k, v in inputs.items()}, times)
                for i in range(0, rows, o.max_batch_size)])]
            return {k: np.concatenate([p[k] for p in parts[0]]) for k in parts[0][0]}
        # Batches already waiting, counting the open (partial) one.
        waiting = -(-(self.queued_rows + rows) // o.max_batch_size)
        if waiting > o.max_enqueued_batches:
            raise QueueFull("The batch scheduling queue to which this task was submitted is full "
                            f"({self.queued_rows} rows in {o.max_enqueued_batches} batches of at "
                            f"most {o.max_batch_size}); retry later")
        future = asyncio.get_running_loop().create_future()
        self.tasks.append(_Task(inputs, rows, future, times))
        self.queued_rows += rows
        if self.on_queue:
            self.on_queue(self.queued_rows)
        # Wake the scheduler only when it has something new to decide (not on every request:
        # each wake-up re-arms a timeout, which cost more than the request itself).
        if len(self.tasks) == 1:
            self._wake.set()
        if self.queued_rows >= o.max_batch_size:
            self._full.set()
        return await future

    async def _schedule(self) -> None:
        o = self.options
        timeout = o.batch_timeout_micros / 1e6
        while True:
            if not self.tasks:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._threads.acquire()
            # Wait for a full batch or the oldest request's timeout, whichever comes first.
            if self.tasks and self.queued_rows < o.max_batch_size:
                remaining = self.tasks[0].enqueued + timeout - time.monotonic()
                if remaining > 0:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), remaining)
                    except TimeoutError:
                        pass
            batch, rows = [], 0
            while self.tasks and rows + self.tasks[0].rows <= o.max_batch_size:
                t = self.tasks.popleft()
                batch.append(t)
                rows += t.rows
            self.queued_rows -= rows
            if self.on_queue:
                self.on_queue(self.queued_rows)
            batch = [t for t in batch if not t.future.cancelled()]
            if not batch:
                self._threads.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _padded_size(self, rows: int) -> int:
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    async def _run(self, batch: list[_Task]) -> None:
        try:
            rows = sum(t.rows for t in batch)
            size = self._padded_size(rows)
            inputs = {}
            for k in batch[0].inputs:
                parts = [t.inputs[k] for t in batch]
                if size > rows:
                    first = parts[0][:1]
                    parts.append(np.repeat(first, size - rows, axis=0))
                inputs[k] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if self.on_batch:
                self.on_batch(size)
            began, ok = time.monotonic(), False
            try:
                if self.executor is None:
                    outputs = self.run(inputs)
                else:
                    outputs = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self.run, inputs)
                ok = True
            except Exception as e:  # noqa: BLE001 - handed to every caller in the batch
                for t in batch:
                    if not t.future.done():
                        t.future.set_exception(e)
                return
            finally:
                if self.on_run:
                    self.on_run([began - t.enqueued for t in batch], time.monotonic() - began,
                                size, ok)
            start, ended = 0, time.monotonic()
            for t in batch:
                if t.times is not None:
                    t.times.append((began, ended))
                if not t.future.done():
                    t.future.set_result({k: v[start:start + t.rows] for k, v in outputs.items()})
                start += t.rows
        finally:
            self._threads.release()

    async def close(self) -> None:
        """Finish what is queued and running, then stop the scheduler."""
        while self.tasks or self._running:
            await asyncio.sleep(0.005)
        self._loop_task.cancel()
