"""Choosing a family member: each member's best plan under its share of the accuracy
floor, the best of those for the objective, and the member in force kept within the
control gain. Real options (measured profiles and calibrations) of two real models of
very different cost stand for a small and a large member; their qualities are given."""

from __future__ import annotations

import pytest

from splitmq.planner import DeviceState, Link, Options, TierState, decide
from splitmq.planner.members import Member, best_plans, choose, member_wants
from splitmq.shared.model.manifest import Quality
from splitmq.shared.protocol.telemetry import Wants

FLOOR = 0.99


def quality(agreement: float) -> Quality:
    return Quality(reference="large", agreement=agreement, samples=100, data="given")


@pytest.fixture(scope="module")
def members(real_pool) -> dict[str, Member]:
    return {
        "small": Member(Options.of(real_pool.get("mnist-cnn")), quality(0.996)),
        "large": Member(Options.of(real_pool.get("efficientnet-lite0")), quality(1.0)),
    }


def deciding(battery: float | None = None, speed: float = 0.5):
    device = DeviceState(speed=speed, link=Link(20e6, 10.0), battery=battery)
    tiers = {"edge": TierState("edge"), "cloud": TierState("cloud", link=Link(100e6, 20.0))}
    return lambda options, wants: decide(options, device, tiers, wants)


def test_a_member_keeps_the_floor_less_its_own_disagreement() -> None:
    wants = Wants(accuracy=FLOOR)
    assert member_wants(wants, quality(1.0)).accuracy == FLOOR
    assert member_wants(wants, quality(0.996)).accuracy == pytest.approx(0.994)
    assert member_wants(wants, quality(0.98)) is None  # alone it falls short of the floor


def test_the_best_plan_of_the_members_wins(members) -> None:
    choices = best_plans(members, Wants(accuracy=FLOOR), deciding())
    assert set(choices) == {"small", "large"}
    assert choices["small"].wants.accuracy == pytest.approx(0.994)
    assert choices["small"].decision.plan.predicted.agreement >= 0.994
    best = min(choices, key=lambda n: choices[n].value)
    assert choose(choices, None, 0.1) == best


def test_a_member_too_poor_for_the_floor_is_not_a_candidate(members) -> None:
    poor = {**members, "small": Member(members["small"].options, quality(0.97))}
    assert set(best_plans(poor, Wants(accuracy=FLOOR), deciding())) == {"large"}


def test_the_member_in_force_stays_within_the_gain(members) -> None:
    choices = best_plans(members, Wants(accuracy=FLOOR), deciding())
    best = choose(choices, None, 0.0)
    other = next(n for n in choices if n != best)
    ratio = choices[other].value / choices[best].value
    assert choose(choices, other, ratio - 1 + 1e-6) == other  # within the gain: it stays
    assert choose(choices, other, (ratio - 1) / 2) == best  # beaten by more: it goes


def test_a_low_battery_plans_for_energy_and_picks_the_cheaper_member(members) -> None:
    full = best_plans(members, Wants(accuracy=FLOOR), deciding(battery=1.0))
    low = best_plans(members, Wants(accuracy=FLOOR), deciding(battery=0.05))
    assert {c.decision.plan.objective for c in full.values()} == {"latency"}
    assert {c.decision.plan.objective for c in low.values()} == {"energy"}
    cheapest = min(low, key=lambda n: low[n].decision.plan.predicted.energy_mj)
    assert choose(low, None, 0.1) == cheapest


def test_an_slo_no_member_meets_still_gets_the_best_effort(members) -> None:
    tight = Wants(accuracy=FLOOR, slo_ms=0.001)
    choices = best_plans(members, tight, deciding())
    assert set(choices) == {"small", "large"}
    assert all(c.wants.slo_ms is None for c in choices.values())
