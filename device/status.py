"""What a device says about itself: its telemetry document (``DeviceTelemetry``).

It carries what the planner decides from: the plan in force, the link
estimate and its age, speed, battery and power draw, what the device wants
(objective, accuracy floor, SLO, byte budget, frame rate), and its own
measured times per frame (preprocessing, head and encoding) that correct
the profile's predictions. The runtime takes a ``Snapshot`` of itself and
the document is built from that value alone. Telemetry goes out every
period, and early when the plan changes or the link estimate moves by
``LINK_MOVE`` or more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    LatencySummary,
    LinkEstimate,
    ModelRef,
    Power,
    Wants,
)
from splitmq.shared.transport.estimates import LinkEstimator

#: A relative change of the uplink or RTT estimate worth telling the planner at once.
LINK_MOVE = 0.25
#: At most this often, telemetry goes out early because the link estimate moved.
REPORT_EVERY_S = 0.5


@dataclass(frozen=True)
class Snapshot:
    """A device's state at one moment: everything its telemetry says."""

    id: str
    plan: Plan
    model: ModelRef
    family: str | None  # the family it asked the planner to choose from
    rps: float
    in_flight: int
    errors: dict[str, int]
    answered: dict[str, int]
    latencies: dict[str, dict]  # e2e, as the stats summarise it
    own: dict[str, dict]  # this device's own work: preprocess, head
    link: LinkEstimate
    speed: float
    battery: float | None
    power: Power
    wants: Wants


def device_telemetry(snap: Snapshot, ts: float) -> DeviceTelemetry:
    """The documented telemetry of the device ``snap`` was taken of."""
    e2e, pre, head = snap.latencies.get("e2e"), snap.own.get("preprocess"), snap.own.get("head")
    return DeviceTelemetry(
        id=snap.id,
        ts=ts,
        rps=snap.rps,
        in_flight=snap.in_flight,
        errors=snap.errors,
        model=snap.model,
        family=snap.family,
        plan=snap.plan.for_device(snap.id),
        link=snap.link,
        speed=snap.speed,
        battery=snap.battery,
        power=snap.power,
        wants=snap.wants,
        e2e=None if e2e is None else LatencySummary.model_validate(e2e),
        answered=snap.answered,
        preprocess=None if pre is None else LatencySummary.model_validate(pre),
        head=None if head is None else LatencySummary.model_validate(head),
    )


def link_moved(
    old: tuple[float | None, float | None], new: tuple[float | None, float | None]
) -> bool:
    """Whether (uplink bps, RTT ms) changed enough to report it before the period ends."""
    for a, b in zip(old, new):
        if (a is None) != (b is None):
            return True
        if a is not None and b is not None and abs(b - a) > LINK_MOVE * max(a, 1e-9):
            return True
    return False


class EarlyReports:
    """Publishes telemetry before its period ends when the link estimate moved (the
    planner acts on it), at most every ``REPORT_EVERY_S``."""

    def __init__(self, estimates: LinkEstimator, publish: Callable[[], None]) -> None:
        self.estimates, self.publish = estimates, publish
        self._reported: tuple[float | None, float | None] = (None, None)
        self._at = 0.0

    def sampled(self) -> None:
        """The estimator took a sample: report it if the estimate moved enough."""
        now = (self.estimates.uplink_bps(), self.estimates.rtt_ms())
        soon = time.monotonic() - self._at < REPORT_EVERY_S
        if not soon and link_moved(self._reported, now):
            self._reported, self._at = now, time.monotonic()
            self.publish()
