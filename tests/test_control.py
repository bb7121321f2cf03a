"""The control loop's rule, without a broker: shared tiers, hysteresis, failover, restarts."""

from __future__ import annotations

import onnx
import pytest
from graphs import chain
from planning import profile_of, row, table

from splitmq.planner import DeviceState, Link, Options, TierState
from splitmq.planner.control import Control, Target, plan_fleet
from splitmq.planner.fleet import device_state, tier_states
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.protocol.plan import FELL_BACK
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    LatencySummary,
    LinkEstimate,
    ModelRef,
    ServiceTime,
    Wants,
    WorkerTelemetry,
)

EDGE = {"edge": TierState("edge", servers=1)}


@pytest.fixture
def tiny(tmp_path) -> ModelVersion:
    onnx.save(chain(), tmp_path / "chain.onnx")
    return ModelPool(tmp_path / "pool").add(tmp_path / "chain.onnx", "chain")


@pytest.fixture
def options(tiny: ModelVersion) -> Options:
    """Six 10 ms segments; cut 2 sent as 100 kB of int8 (0.5 ms to encode)."""
    return Options(tiny, profile_of([10.0] * 6), table([row(2, "int8", 100_000, 1.0, 0.5, 0.2)]))


def target(options, device="d", *, speed=0.25, mbit=100.0, fps=5.0, tiers=None, current=None):
    return Target(
        device=device,
        state=DeviceState(speed=speed, link=Link(mbit * 1e6, 2.0), rate_rps=fps),
        wants=Wants(fps=fps),
        options=options,
        tiers=EDGE if tiers is None else tiers,
        current=current,
    )


def test_devices_sharing_a_one_thread_edge_do_not_all_go_there(options: Options) -> None:
    # Alone, a slow device offloads: 80 ms here + 40 ms at the edge beats 240 ms local.
    alone = plan_fleet([target(options)], now=0.0)
    assert not alone["d"].device_only
    # Ten of them at 5 frames/s would need 2 edge threads busy: they are split.
    crowd = [target(options, f"d{i}") for i in range(10)]
    plans = plan_fleet(crowd, now=0.0)
    offloaded = [d for d, p in plans.items() if not p.device_only]
    assert 1 <= len(offloaded) < 10
    load = len(offloaded) * 5 * 0.0402  # Erlangs: rate x (decode + 4 segments)
    assert load < 1, "the edge the plans predict must not be saturated"


def test_a_boundary_crossed_every_second_switches_at_most_once_per_dwell(options) -> None:
    control = Control(dwell_s=10.0, gain=0.1)
    current, switches = None, 0
    for second in range(30):
        mbit = 12.0 if second % 2 else 40.0  # local wins by 18%, then offload by 17%
        new = plan_fleet([target(options, speed=0.5, mbit=mbit, current=current)], second, control)
        if "d" in new:
            switches += current is not None
            current = new["d"]
    assert 1 <= switches <= 3


def test_a_plan_through_a_tier_that_went_away_moves_at_once(options: Options) -> None:
    first = plan_fleet([target(options)], now=100.0)["d"]
    assert first.tiers == ("edge",)
    gone = plan_fleet([target(options, tiers={}, current=first)], now=100.5)  # dwell not over
    assert gone["d"].device_only


def test_a_device_back_from_its_own_fallback_follows_the_planner_whatever_the_gain(
    options: Options,
) -> None:
    """The device fell back to running alone when the edge stopped answering; with the
    edge back, the planner's choice replaces the fallback once it is a dwell old, though
    the gain is below the 10% that would move a plan the planner chose."""
    control = Control(dwell_s=10.0, gain=0.1)
    planned = plan_fleet([target(options, speed=0.5, mbit=40.0)], 100.0, control)["d"]
    assert planned.tiers == ("edge",)
    local = next(o for o in planned.alternatives if o.device_only)
    fallback = planned.fallback(local, f"{FELL_BACK}no edge worker is subscribed")
    assert fallback.fell_back and fallback.ts > 100.0
    fell_at = fallback.ts
    young = plan_fleet([target(options, speed=0.5, mbit=40.0, current=fallback)], fell_at + 9)
    assert young == {}  # a tier that keeps failing costs one try per dwell
    back = plan_fleet([target(options, speed=0.5, mbit=40.0, current=fallback)], fell_at + 10.5)
    assert back["d"].tiers == ("edge",)
    chosen = planned.model_copy(update={"ts": fell_at})  # the planner's own choice
    kept = plan_fleet([target(options, speed=0.5, mbit=30.0, current=chosen)], fell_at + 30)
    assert kept == {}  # keeps the hysteresis: local would win by 3.5% only


def test_the_same_inputs_keep_the_same_plans(options: Options) -> None:
    crowd = [target(options, f"d{i}") for i in range(6)]
    plans = plan_fleet(crowd, now=0.0)
    again = [target(options, f"d{i}", current=plans.get(f"d{i}")) for i in range(6)]
    assert plan_fleet(again, now=50.0) == {}  # a restarted planner publishes nothing new


def test_an_slo_nobody_can_meet_still_gets_the_best_plan_with_the_reason(options) -> None:
    t = target(options)
    hard = Target(t.device, t.state, Wants(slo_ms=1.0), t.options, t.tiers, None)
    plan = plan_fleet([hard], now=0.0)["d"]
    assert plan.reason.startswith("no option meets the latency SLO of 1 ms")
    assert "best effort" in plan.reason


def _device_doc(tiny: ModelVersion, head_ms: float | None) -> DeviceTelemetry:
    plan = make_plan(tiny, tiny.last_cut, "raw").for_device("d")
    return DeviceTelemetry(
        id="d",
        ts=1.0,
        rps=3.0,
        in_flight=0,
        errors={},
        model=ModelRef(model=tiny.name, version=tiny.version),
        plan=plan,
        link=LinkEstimate(uplink_bps=5e6, rtt_ms=10.0, age_s=1.0),
        speed=1.0,
        wants=Wants(),
        answered={},
        preprocess=LatencySummary(p50_ms=2.0, p95_ms=2.0, n=10),
        head=None if head_ms is None else LatencySummary(p50_ms=head_ms, p95_ms=head_ms, n=10),
    )


def test_measured_times_correct_the_profile(tiny: ModelVersion, options: Options) -> None:
    # The device runs the whole model (60 ms predicted) in 120 ms: it is half as fast.
    slow = device_state(_device_doc(tiny, 120.0), options)
    assert slow.speed == pytest.approx(0.5) and slow.preprocess_ms == pytest.approx(1.0)
    assert slow.link == Link(5e6, 10.0) and slow.rate_rps == 3.0
    assert device_state(_device_doc(tiny, None), options).speed == 1.0  # nothing measured
    stale = _device_doc(tiny, None).model_copy(
        update={"link": LinkEstimate(uplink_bps=5e6, rtt_ms=10.0, age_s=600.0)}
    )
    assert device_state(stale, options).link is None  # an old estimate is no estimate
    # A worker running segment 2 -> end (40 ms predicted) in 80 ms: the tier is at half speed.
    service = ServiceTime.model_validate(
        {
            "model": tiny.name,
            "version": 1,
            "from": 2,
            "to": None,
            "p50_ms": 80.0,
            "p95_ms": 90.0,
            "n": 64,
        }
    )
    worker = WorkerTelemetry(
        role="edge",
        id="w",
        ts=1.0,
        rps=1.0,
        in_flight=0,
        errors={},
        threads=2,
        queued=1,
        models=[],
        service=[service],
        served=64,
        duplicates=0,
        answered=64,
        forwarded={},
    )
    (edge,) = tier_states([worker], options).values()
    assert edge.speed == pytest.approx(0.5) and edge.servers == 2 and edge.queued == 1
    assert edge.service_ms == {(2, tiny.last_cut): 80.0}
    assert tier_states([], options) == {}
