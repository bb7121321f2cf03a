"""Prometheus metrics of an edge or cloud worker, on a registry of its own.

What the worker counts anyway (its telemetry document, its ``Stats``) is read
at each scrape; hop and queue times are observed as they happen. The shared
parts (registry, server) are in ``shared.metrics``; the device's and the
planner's metrics live beside those roles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric

from splitmq.shared.metrics import RoleMetrics, counter_family, gauge_family
from splitmq.shared.protocol.telemetry import WorkerTelemetry
from splitmq.shared.runtime.executor import Outcome
from splitmq.shared.runtime.stats import Stats


class WorkerMetrics(RoleMetrics):
    """An edge or cloud worker's metrics; every series carries its ``tier``."""

    def __init__(
        self, tier: str, telemetry: Callable[[float], WorkerTelemetry], stats: Stats[Any]
    ) -> None:
        super().__init__(lambda: _worker(telemetry(time.time()), stats))
        self.tier = tier
        self._hop = self._histogram(
            "splitmq_worker_hop_seconds",
            "Compute time of the segment a hop ran, by model and segment (from-to cut)",
            ("tier", "model", "version", "segment"),
        )
        self._waited = self._histogram(
            "splitmq_worker_queue_wait_seconds",
            "Time a request waited in the worker before its hop ran",
            ("tier",),
        ).labels(tier)
        self.batch = self._histogram(
            "splitmq_worker_batch_size",
            "Requests a worker thread took together (a dynamic batch; 1: alone); those of "
            "one segment ran as one call",
            ("tier",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ).labels(tier)
        self.received = self._counter(
            "splitmq_worker_received_bytes", "Payload bytes received: requests, frames", ("tier",)
        ).labels(tier)
        self.sent = self._counter(
            "splitmq_worker_sent_bytes", "Bytes published: answers, forwards, errors", ("tier",)
        ).labels(tier)

    def ran(self, start: int, stop: int | None, outcome: Outcome, t_recv: float) -> None:
        """A hop ran segment ``start``-``stop`` (None: to the outputs) of ``outcome.mv``."""
        mv, segment = outcome.mv, f"{start}-{'end' if stop is None else stop}"
        assert mv is not None
        self._hop.labels(self.tier, mv.name, str(mv.version), segment).observe(
            outcome.compute_ms / 1000
        )
        self._waited.observe(max(0.0, outcome.t_start - t_recv))


def _worker(doc: WorkerTelemetry, stats: Stats[Any]) -> Iterator[Metric]:
    tier = doc.role
    counts = stats.snapshot_counts()  # both at once: a repeat counts in both, one after the other
    replayed = counts.get("replayed", 0)
    outcomes = {
        "answered": doc.answered,
        "forwarded": sum(doc.forwarded.values()),
        "replayed": replayed,
        "duplicate": counts.get("duplicates", 0) - replayed,
        "retained": counts.get("retained_requests", 0),
        **doc.errors,
    }
    yield counter_family(
        "splitmq_worker_requests",
        "Requests that ended, by outcome: answered, forwarded, replayed, duplicate, "
        "retained (a stale copy the broker replayed: not run), or the error code sent "
        "to the device",
        {(tier, outcome): n for outcome, n in outcomes.items()},
        ("tier", "outcome"),
    )
    for name, doc_text, value in (
        ("splitmq_worker_queued", "Requests received, waiting for a thread", doc.queued),
        ("splitmq_worker_in_flight", "Requests being served now", doc.in_flight),
        ("splitmq_worker_threads", "Inference threads: requests served at once", doc.threads),
    ):
        yield gauge_family(name, doc_text, {(tier,): value}, ("tier",))
