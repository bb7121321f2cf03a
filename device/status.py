"""What a device says about itself: its telemetry document (``DeviceTelemetry``).

It carries what the planner decides from: the plan in force, the link
estimate and its age, speed, battery and power draw, what the device wants
(objective, accuracy floor, SLO, byte budget, frame rate), and its own
measured times per frame (preprocessing, head and encoding) that correct
the profile's predictions. Telemetry goes out every period, and early when
the plan changes or the link estimate moves by ``LINK_MOVE`` or more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitmq.shared.protocol.telemetry import DeviceTelemetry, LatencySummary, Link, ModelRef

if TYPE_CHECKING:
    from splitmq.device.runtime import Device

#: A relative change of the uplink or RTT estimate worth telling the planner at once.
LINK_MOVE = 0.25


def device_telemetry(device: Device, ts: float) -> DeviceTelemetry:
    """The documented telemetry of ``device`` now."""
    latencies = device.stats.latencies()
    own = device.timing.latencies()
    plan, mv = device.plan, device.mv
    e2e, pre, head = latencies.get("e2e"), own.get("preprocess"), own.get("head")
    return DeviceTelemetry(
        id=device.id,
        ts=ts,
        rps=device.stats.rate(),
        in_flight=len(device.flights),
        errors=device.stats.failures(),
        model=ModelRef(model=mv.name, version=mv.version),
        plan=plan.for_device(device.id),
        link=Link(
            uplink_bps=device.estimates.uplink_bps(),
            rtt_ms=device.estimates.rtt_ms(),
            age_s=device.estimates.age_s(),
        ),
        speed=device.speed,
        battery=None if device.battery is None else round(device.battery.level, 4),
        power=device.power,
        wants=device.wants,
        e2e=None if e2e is None else LatencySummary.model_validate(e2e),
        answered=device.stats.by_prefix("answered_"),
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
