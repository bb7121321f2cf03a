"""Prometheus metrics of the planner, on a registry of its own.

Devices planned for, refused documents and the broker's dropped messages are
read from the planner's telemetry at each scrape; published plans are counted
by why as they go out. Built on ``shared.metrics``, so the planner never
imports the serving runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.metrics_core import Metric

from splitmq.shared.metrics import RoleMetrics, counter_family, gauge_family
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import PlannerTelemetry

#: Why the planner published a plan (the ``reason`` of its plans counter).
PLAN_REASONS = ("first", "not_ready", "version", "objective", "replanned")


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
        before = retained.get((plan.device or "", plan.topic_model))
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
    yield gauge_family("splitmq_planner_devices", "Devices it plans for now", {(): doc.devices})
    yield counter_family(
        "splitmq_planner_errors",
        "Documents refused (bad_telemetry, bad_plan, bad_model) and failed rounds (internal)",
        {(code,): n for code, n in doc.errors.items()},
        ("code",),
    )
    if doc.broker_dropped is not None:
        yield counter_family(
            "splitmq_broker_dropped_messages",
            "Messages the broker dropped since it started (full client queues), from $SYS",
            {(): doc.broker_dropped},
        )
    if doc.wan_up is not None:
        yield gauge_family(
            "splitmq_planner_wan_up",
            "Whether the site's bridge to the cloud broker is connected (1) or not (0)",
            {(): int(doc.wan_up)},
        )
