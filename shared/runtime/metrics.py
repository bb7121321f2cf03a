"""Prometheus metrics of every role, each role on a registry of its own.

What a role counts anyway (its telemetry document, its ``Stats``) is read when
Prometheus scrapes, so the metrics and the telemetry never disagree; what
telemetry has no room for (latency histograms, bytes, plan changes by kind) is
observed where it happens, by one call in the role. Each role object owns its
metrics (``worker.metrics.registry``), so several roles in one process (the
tests, the demo) never collide as they would on the global registry.
``MetricsServer`` serves a registry on ``/metrics`` while a role runs; every
metric is listed in docs/operations.md, Metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitmq.shared.errors import UserError
from splitmq.shared.protocol.ids import TIERS
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.results import HopLatency
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    PlannerTelemetry,
    WorkerTelemetry,
)
from splitmq.shared.runtime.executor import Outcome
from splitmq.shared.runtime.stats import Stats

#: Seconds: from a tiny model's 1 ms hop to a request that waited out a retry.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Why the planner published a plan (the ``reason`` of its plans counter).
PLAN_REASONS = ("first", "not_ready", "version", "objective", "replanned")
#: Who chose the plan a device switched to (``device.follow.Switch.source``).
SWITCH_SOURCES = ("planner", "fallback", "caller")
#: Answers a device ignores, by why, from the names its ``Stats`` counts them under.
IGNORED = {
    "duplicate": "duplicate_answers",
    "after_failure": "answered_after_failure",
    "unreadable": "bad_result",
    "expired_attempt": "expired_attempts",
}
#: Where a device's request may be answered.
ANSWERING = ("device", *TIERS)
#: The parts of one hop's time that a result's latency breakdown carries.
HOP_PARTS = ("transfer_ms", "queue_ms", "compute_ms", "encode_ms")


class _Read(Collector):
    """Metric families computed at each scrape from what the role keeps anyway."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    values: Mapping[tuple[str, ...], float],
    labels: Sequence[str] = (),
) -> Metric:
    """A family of ``kind`` holding ``values``, by their label values."""
    family = kind(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


_counter_family = partial(_family, CounterMetricFamily)
_gauge_family = partial(_family, GaugeMetricFamily)


class RoleMetrics:
    """A registry of one role's own, and what every role's metrics share."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Read(read))

    def _histogram(self, name: str, doc: str, labels: Sequence[str]) -> Histogram:
        return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=self.registry)

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)


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
        **doc.errors,
    }
    yield _counter_family(
        "splitmq_worker_requests",
        "Requests that ended, by outcome: answered, forwarded, replayed, duplicate, "
        "or the error code sent to the device",
        {(tier, outcome): n for outcome, n in outcomes.items()},
        ("tier", "outcome"),
    )
    for name, doc_text, value in (
        ("splitmq_worker_queued", "Requests received, waiting for a thread", doc.queued),
        ("splitmq_worker_in_flight", "Requests being served now", doc.in_flight),
        ("splitmq_worker_threads", "Inference threads: requests served at once", doc.threads),
    ):
        yield _gauge_family(name, doc_text, {(tier,): value}, ("tier",))


class _Answer(Protocol):
    """What the device metrics read of an answer (``device.answers.Answer``)."""

    @property
    def tier(self) -> str: ...
    @property
    def e2e_ms(self) -> float: ...
    @property
    def latency(self) -> tuple[HopLatency, ...]: ...


class DeviceMetrics(RoleMetrics):
    """A device's metrics."""

    def __init__(
        self,
        telemetry: Callable[[float], DeviceTelemetry],
        stats: Stats[Any],
        window: Callable[[], float],
    ) -> None:
        super().__init__(lambda: _device(telemetry(time.time()), stats, window()))
        self._e2e = self._histogram(
            "splitmq_device_e2e_seconds",
            "End-to-end latency of answered requests, by the tier that answered",
            ("tier",),
        )
        self._hop = self._histogram(
            "splitmq_device_hop_seconds",
            "Where answered requests' time went, from the result's latency breakdown: "
            "by hop tier and part (transfer, queue, compute, encode)",
            ("tier", "part"),
        )
        self.uplink = self._counter(
            "splitmq_device_uplink_bytes", "Request bytes published, every attempt"
        )
        self._switches = self._counter(
            "splitmq_device_plan_switches",
            "Plan switches applied, by who chose the plan: planner, fallback, caller",
            ("source",),
        )
        for source in SWITCH_SOURCES:
            self._switches.labels(source)

    def answered(self, answer: _Answer) -> None:
        self._e2e.labels(answer.tier).observe(answer.e2e_ms / 1000)
        for hop in answer.latency:
            for part in HOP_PARTS:
                ms = getattr(hop, part)
                if ms is not None:  # a transfer spans two clocks: an offset may make it < 0
                    self._hop.labels(hop.tier, part.removesuffix("_ms")).observe(
                        max(0.0, ms) / 1000
                    )

    def switched(self, source: str) -> None:
        self._switches.labels(source).inc()


def _device(doc: DeviceTelemetry, stats: Stats[Any], window: float) -> Iterator[Metric]:
    counts = stats.snapshot_counts()
    yield _counter_family(
        "splitmq_device_answered",
        "Requests answered, by the tier that answered: device, edge, cloud",
        {(tier,): doc.answered.get(tier, 0) for tier in ANSWERING},
        ("tier",),
    )
    yield _counter_family(
        "splitmq_device_failed",
        "Requests failed, by error code (timeout: no answer after the last attempt)",
        {(code,): n for code, n in doc.errors.items()},
        ("code",),
    )
    yield _counter_family(
        "splitmq_device_retries",
        "Requests sent again after a timeout",
        {(): counts.get("retries", 0)},
    )
    yield _counter_family(
        "splitmq_device_ignored_answers",
        "Answers and errors ignored, by why: duplicate, after_failure, unreadable, "
        "expired_attempt (an attempt that will be sent again)",
        {(why,): counts.get(name, 0) for why, name in IGNORED.items()},
        ("why",),
    )
    yield _gauge_family(
        "splitmq_device_in_flight", "Requests sent, not yet ended", {(): doc.in_flight}
    )
    yield _gauge_family(
        "splitmq_device_window", "Requests it may have in flight now (AIMD)", {(): window}
    )
    model = (doc.model.model, str(doc.model.version))
    yield _gauge_family(
        "splitmq_device_plan_cut",
        "The cut of the plan in force (the last cut: on the device alone)",
        {model: doc.plan.cut},
        ("model", "version"),
    )
    link, optional = doc.link, []
    if link.uplink_bps is not None:
        optional.append(("uplink_estimate_bits_per_second", "Uplink estimate", link.uplink_bps))
    if link.rtt_ms is not None:
        optional.append(("rtt_estimate_seconds", "Round-trip time estimate", link.rtt_ms / 1000))
    if doc.battery is not None:
        optional.append(("battery_ratio", "Simulated battery charge (0-1)", doc.battery))
    for name, text, value in optional:
        yield _gauge_family(f"splitmq_device_{name}", text, {(): value})


class PlannerMetrics(RoleMetrics):
    """The planner's metrics."""

    def __init__(self, telemetry: Callable[[float], PlannerTelemetry]) -> None:
        super().__init__(lambda: _planner(telemetry(time.time())))
        self._published = self._counter(
            "splitmq_planner_plans_published",
            "Plans published, by why: first, not_ready, version, objective, replanned",
            ("reason",),
        )
        for reason in PLAN_REASONS:
            self._published.labels(reason)

    def published(self, plan: Plan, retained: Mapping[tuple[str, str], Plan], ready: bool) -> None:
        """``plan`` goes out; ``retained`` holds the plans in force before it."""
        before = retained.get((plan.device or "", plan.model))
        if not ready:
            reason = "not_ready"
        elif before is None:
            reason = "first"
        elif before.version != plan.version:
            reason = "version"
        elif before.objective != plan.objective:
            reason = "objective"
        else:
            reason = "replanned"
        self._published.labels(reason).inc()


def _planner(doc: PlannerTelemetry) -> Iterator[Metric]:
    yield _gauge_family("splitmq_planner_devices", "Devices it plans for now", {(): doc.devices})
    yield _counter_family(
        "splitmq_planner_errors",
        "Documents refused (bad_telemetry, bad_plan, bad_model) and failed rounds (internal)",
        {(code,): n for code, n in doc.errors.items()},
        ("code",),
    )
    if doc.broker_dropped is not None:
        yield _counter_family(
            "splitmq_broker_dropped_messages",
            "Messages the broker dropped since it started (full client queues), from $SYS",
            {(): doc.broker_dropped},
        )


class MetricsServer:
    """A registry on ``http://ADDR:PORT/metrics``, from a thread of its own, until ``close``.

    Port 0 takes any free port: ``port`` says which.
    """

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr, registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {addr}:{port}: {exc.strerror}") from None
        self.port: int = self._httpd.server_port
        self.url = f"http://{addr}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serving(registry: CollectorRegistry, port: int | None) -> Iterator[MetricsServer | None]:
    """``registry`` served on ``port`` while inside (port None: not served)."""
    if port is None:
        yield None
        return
    with MetricsServer(registry, port) as server:
        yield server
