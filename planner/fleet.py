"""Devices and tiers as their telemetry describes them, the profile corrected by it.

The planner reads only retained telemetry, so everything here is a pure
function of the latest documents: a restarted planner sees the same.

- **Links.** A link estimate older than ``STALE_LINK_S`` is no estimate: a
  device without one can only run locally (until its probes give one).
- **Devices** report their own time per frame for the head of the plan they
  run (and the encoding) and for preprocessing. The profile predicts the
  head for the profile's host; the ratio gives the device's real speed,
  which replaces the nominal one for every option (a device running a
  different cut measures that cut next, so the correction follows).
- **Tiers** are all their online workers together: their inference
  threads, what they have queued, and their measured service time per
  segment. Measured segments are used as measured; the ratio of measured
  to predicted over them gives the tier's speed for every other segment.
  Workers report the median of their last 64 runs per segment, so a worker
  slowed by other load shows within a few telemetry periods. The profile is
  that of the execution provider the tier's workers report (``cuda``: its cuda
  profile where measured); workers that disagree count by their threads.
- A device's **rate** is the frame rate it wants (``wants.fps``), or what
  it answered over the last 10 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from splitmq.planner.options import Options
from splitmq.planner.state import DeviceState, TierState
from splitmq.shared.protocol.ids import TIERS, Tier
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    Offline,
    TelemetryDoc,
    WorkerTelemetry,
)
from splitmq.shared.units import Link

#: A link estimate older than this is treated as unknown (seconds).
STALE_LINK_S = 60.0
#: Frames a device's own time must cover before it corrects the profile.
MIN_SAMPLES = 3
#: Below this predicted time (ms) a ratio is noise, not a speed.
MIN_PREDICTED_MS = 0.5


def device_state(doc: DeviceTelemetry, options: Options) -> DeviceState:
    """The device its telemetry describes, its speed corrected by its own head time."""
    est = doc.link
    fresh = est.age_s is not None and est.age_s <= STALE_LINK_S
    link = Link(est.uplink_bps, est.rtt_ms or 0.0) if est.uplink_bps and fresh else None
    speed = doc.speed
    predicted = _head_ms(options, doc)
    if doc.head is not None and doc.head.n >= MIN_SAMPLES and predicted >= MIN_PREDICTED_MS:
        speed = predicted / max(doc.head.p50_ms, 1e-6)
    preprocess = 0.0 if doc.preprocess is None else doc.preprocess.p50_ms * speed
    return DeviceState(
        speed=speed,
        link=link,
        battery=doc.battery,
        power=doc.power,
        rate_rps=doc.wants.fps or doc.rps,
        preprocess_ms=preprocess,
    )


def _head_ms(options: Options, doc: DeviceTelemetry) -> float:
    """What the profile predicts for the head (and encoding) of the device's plan."""
    plan = doc.plan
    if (plan.model, plan.version) != (options.model, options.version):
        return 0.0
    if plan.device_only:
        return float(options.head_ms[options.last])
    s = options.sends.index(plan.cut, plan.codec)
    encode = 0.0 if s is None else float(options.sends.encode_ms[s])
    return float(options.head_ms[plan.cut]) + encode


def tier_states(
    workers: Iterable[WorkerTelemetry],
    options: Options,
    links: dict[str, Link] | None = None,
    speeds: dict[str, float] | None = None,
) -> dict[str, TierState]:
    """Every tier with a worker online, for ``options``' model version; ``speeds`` are
    what an operator knows of a tier's hosts, until its workers have measured."""
    docs = list(workers)
    states: dict[str, TierState] = {}
    for tier in TIERS:
        mine = [w for w in docs if w.role == tier]
        if mine:
            prior = (speeds or {}).get(tier, 1.0)
            states[tier] = _tier(tier, mine, options, (links or {}).get(tier), prior)
    return states


def _tier(
    tier: Tier, docs: list[WorkerTelemetry], options: Options, link: Link | None, prior: float
) -> TierState:
    weights: dict[tuple[int, int], int] = {}
    times: dict[tuple[int, int], float] = {}
    measured_ms = predicted_ms = 0.0
    provider = _provider(docs)
    segment_ms = options.tier_segment_ms(provider)
    for doc in docs:
        for s in doc.service:
            if (s.model, s.version) != (options.model, options.version):
                continue
            key = (s.from_, options.last if s.to is None else s.to)
            weights[key] = weights.get(key, 0) + s.n
            times[key] = times.get(key, 0.0) + s.p50_ms * s.n
            measured_ms += s.p50_ms * s.n
            predicted_ms += float(segment_ms[key]) * s.n
    speed = predicted_ms / measured_ms if measured_ms > 0 and predicted_ms > 0 else prior
    return TierState(
        tier=tier,
        servers=sum(d.threads for d in docs),
        queued=sum(d.queued for d in docs),
        speed=speed,
        link=link,
        service_ms={key: times[key] / weights[key] for key in times},
        provider=provider,
    )


def _provider(docs: list[WorkerTelemetry]) -> str:
    """The execution provider most of a tier's threads run on (no report: cpu)."""
    threads: dict[str, int] = {}
    for doc in docs:
        threads[doc.provider or "cpu"] = threads.get(doc.provider or "cpu", 0) + doc.threads
    return max(threads, key=lambda p: threads[p])


def with_load(states: dict[str, TierState], busy: dict[str, float]) -> dict[str, TierState]:
    """The tiers with ``busy`` Erlangs of load from other devices on each."""
    return {name: replace(state, busy=busy.get(name, 0.0)) for name, state in states.items()}


#: A device's uplink estimate moving this many times (up or down) is planned for at once.
LINK_JUMP = 2.0


def telemetry_news(before: TelemetryDoc | None, now: TelemetryDoc | None) -> bool:
    """Whether a telemetry change should be planned for now rather than in the next slot."""
    if before is None or now is None or isinstance(now, Offline) != isinstance(before, Offline):
        return True
    if isinstance(now, DeviceTelemetry) and isinstance(before, DeviceTelemetry):
        old, new = before.link.uplink_bps, now.link.uplink_bps
        if (old is None) != (new is None):
            return True
        if old and new and max(old, new) / min(old, new) >= LINK_JUMP:
            return True
    return False


def in_force(doc: DeviceTelemetry, retained: Plan | None) -> Plan | None:
    """The plan the device runs: the planner's, unless the device moved on since (its own
    fallback, newer than the retained plan); None when the planner never planned for it."""
    if retained is None:
        return None
    running = doc.plan
    if running.ts > retained.ts and not running.same_option(retained):
        return running.for_device(doc.id)
    return retained
