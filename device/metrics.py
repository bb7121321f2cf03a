"""Prometheus metrics of a device, on a registry of its own.

Answers, failures, retries and the plan in force are read from the device's
telemetry and ``Stats`` at each scrape; end-to-end and per-hop latencies, uplink
bytes and plan switches are observed as they happen. Built on ``shared.metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from splitmq.shared.metrics import RoleMetrics, counter_family, gauge_family
from splitmq.shared.protocol.ids import TIERS
from splitmq.shared.protocol.results import HopLatency
from splitmq.shared.protocol.telemetry import DeviceTelemetry
from splitmq.shared.runtime.stats import Stats

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
        self.probes = self._counter(
            "splitmq_device_probe_bytes", "Bytes of link probes published (trains, RTT)"
        )
        self._switches = self._counter(
            "splitmq_device_plan_switches",
            "Plan switches applied, by who chose the plan: planner, fallback, caller",
            ("source",),
        )
        for source in SWITCH_SOURCES:
            self._switches.labels(source)
        # each answer observes up to nine series: ``labels()`` per observation cost more
        # than the observations, so the series are looked up once
        self._e2e_by: dict[str, Any] = {}
        self._hop_by: dict[tuple[str, str], Any] = {}

    def answered(self, answer: _Answer) -> None:
        e2e = self._e2e_by.get(answer.tier)
        if e2e is None:
            e2e = self._e2e_by[answer.tier] = self._e2e.labels(answer.tier)
        e2e.observe(answer.e2e_ms / 1000)
        for hop in answer.latency:
            for part in HOP_PARTS:
                ms = getattr(hop, part)
                if ms is not None:  # a transfer spans two clocks: an offset may make it < 0
                    child = self._hop_by.get((hop.tier, part))
                    if child is None:
                        child = self._hop.labels(hop.tier, part.removesuffix("_ms"))
                        self._hop_by[hop.tier, part] = child
                    child.observe(max(0.0, ms) / 1000)

    def switched(self, source: str) -> None:
        self._switches.labels(source).inc()


def _device(doc: DeviceTelemetry, stats: Stats[Any], window: float) -> Iterator[Metric]:
    counts = stats.snapshot_counts()
    yield counter_family(
        "splitmq_device_answered",
        "Requests answered, by the tier that answered: device, edge, cloud",
        {(tier,): doc.answered.get(tier, 0) for tier in ANSWERING},
        ("tier",),
    )
    yield counter_family(
        "splitmq_device_failed",
        "Requests failed, by error code (timeout: no answer after the last attempt)",
        {(code,): n for code, n in doc.errors.items()},
        ("code",),
    )
    yield counter_family(
        "splitmq_device_retries",
        "Requests sent again after a timeout",
        {(): counts.get("retries", 0)},
    )
    yield counter_family(
        "splitmq_device_ignored_answers",
        "Answers and errors ignored, by why: duplicate, after_failure, unreadable, "
        "expired_attempt (an attempt that will be sent again)",
        {(why,): counts.get(name, 0) for why, name in IGNORED.items()},
        ("why",),
    )
    yield gauge_family(
        "splitmq_device_in_flight", "Requests sent, not yet ended", {(): doc.in_flight}
    )
    yield gauge_family(
        "splitmq_device_window", "Requests it may have in flight now (AIMD)", {(): window}
    )
    model = (doc.model.model, str(doc.model.version))
    yield gauge_family(
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
        yield gauge_family(f"splitmq_device_{name}", text, {(): value})
