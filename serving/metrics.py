"""Prometheus text exposition, written by hand (no extra dependency): request counts and latency
per model, version, signature and API; batch sizes; batching queue depth."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names, values, extra=()):
    pairs = [*zip(names, values), *extra]
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class Metrics:
    REQUEST_LABELS = ("model", "version", "signature", "api", "code")
    LATENCY_LABELS = ("model", "version", "signature", "api")
    BATCH_LABELS = ("model", "version", "signature")

    def __init__(self, extra_labels: tuple[tuple[str, str], ...] = ()):
        self.extra_labels = extra_labels  # e.g. (("worker", "0"),) in a --workers server
        self._lock = threading.Lock()
        self.requests: dict[tuple, int] = defaultdict(int)
        self.latency: dict[tuple, Histogram] = {}
        self.batch_size: dict[tuple, Histogram] = {}
        self.queue_depth: dict[tuple, callable] = {}

    def request(self, model, version, signature, api, code, seconds) -> None:
        with self._lock:
            self.requests[(model, version, signature, api, code)] += 1
            key = (model, version, signature, api)
            h = self.latency.get(key)
            if h is None:
                h = self.latency[key] = Histogram(LATENCY_BUCKETS)
            h.observe(seconds)

    def batch(self, model, version, signature, size: int) -> None:
        with self._lock:
            key = (model, version, signature)
            h = self.batch_size.get(key)
            if h is None:
                h = self.batch_size[key] = Histogram(BATCH_BUCKETS)
            h.observe(size)

    def register_queue(self, model, version, signature, depth_fn) -> None:
        with self._lock:
            self.queue_depth[(model, version, signature)] = depth_fn

    def unregister_queue(self, model, version, signature) -> None:
        with self._lock:
            self.queue_depth.pop((model, version, signature), None)

    def families(self) -> list[list]:
        """[[name, help, type, [sample lines]], ...]: plain lists, so that the workers of a
        --workers server can send theirs to the one answering a scrape (see workers.py)."""
        extra = list(self.extra_labels)
        with self._lock:
            requests = [f"zoo_serving_requests_total{_labels(self.REQUEST_LABELS, key, extra)} {n}"
                        for key, n in sorted(self.requests.items())]
            latency = self._histogram("zoo_serving_request_latency_seconds", self.LATENCY_LABELS,
                                      self.latency, extra)
            batches = self._histogram("zoo_serving_batch_size", self.BATCH_LABELS,
                                      self.batch_size, extra)
            queues = [f"zoo_serving_batch_queue_rows{_labels(self.BATCH_LABELS, key, extra)} "
                      f"{fn()}" for key, fn in sorted(self.queue_depth.items())]
        return [["zoo_serving_requests_total", "Requests answered, by final status code.",
                 "counter", requests],
                ["zoo_serving_request_latency_seconds",
                 "Time from request received to response ready.", "histogram", latency],
                ["zoo_serving_batch_size", "Rows in each batch run (after padding).", "histogram",
                 batches],
                ["zoo_serving_batch_queue_rows", "Rows waiting in a batching queue.", "gauge",
                 queues]]

    def render(self, others: list[list[list]] = ()) -> str:
        """Prometheus text of these metrics and, under the same headers, `others`' families."""
        merged = {f[0]: f for f in self.families()}
        for families in others:
            for name, _, _, samples in families:
                if name in merged:
                    merged[name][3] += samples
        out = []
        for name, help_text, kind, samples in merged.values():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"

    @staticmethod
    def _histogram(name, label_names, table, extra) -> list[str]:
        out = []
        for key, h in sorted(table.items()):
            cumulative = 0
            for bound, c in zip([*h.buckets, "+Inf"], h.counts):
                cumulative += c
                out.append(f"{name}_bucket{_labels(label_names, key, [*extra, ('le', bound)])} "
                           f"{cumulative}")
            out.append(f"{name}_sum{_labels(label_names, key, extra)} {h.sum}")
            out.append(f"{name}_count{_labels(label_names, key, extra)} {h.count}")
        return out
