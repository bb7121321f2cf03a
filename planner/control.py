"""The control loop's decision: plans for every device at once, with hysteresis.

Pure: given what the retained topics hold (each device's telemetry and the
plan in force, each tier's workers) and the time, it returns the plans to
publish. The planner service calls it on every change.

- **Shared tiers.** Devices are planned in turns (by id, for the same result
  every time): each one sees the load all the others' plans put on each
  tier (their rate times the thread time their option takes there), and the
  turns repeat until nobody moves (``rounds`` at most). Ten slow devices on
  a one-thread edge do not all go there: once it is loaded, the queue the
  cost model predicts makes running locally (or the cloud) the better plan
  for the rest.
- **Hysteresis.** A device keeps its plan unless the plan broke (a tier it
  uses is gone or saturated, or it misses a constraint), its objective
  changed (a low battery makes it energy), a newer model version was
  announced (``model/<name>``), it was made without a link
  estimate (it has no alternatives), or a better one is
  predicted to gain at least ``gain`` (10%) of the objective and the plan
  in force is at least ``dwell_s`` old; a gain of ``urgent`` (50%: the plan
  in force costs twice the best) waits only ``urgent_dwell_s`` (2 s). A
  plan's age is its own ``ts``, so a restarted planner applies the same rule.
- **Fail-back.** A device's own fallback (its plan's tier stopped answering)
  is no choice of the planner's: once it is ``dwell_s`` old, the planner's
  best plan replaces it whatever the gain, so a device returns to a tier that
  came back (or moves to the best plan without it) within the dwell, and a
  tier that keeps failing it costs one try per dwell.
- **Constraints nobody can meet** (an SLO below any option's latency) still
  give the device a plan: the best within the accuracy floor alone, whose
  reason says which constraint cannot be met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from splitmq.planner.cost import Costs
from splitmq.planner.decide import Decision, Infeasible, assess, decide
from splitmq.planner.fleet import with_load
from splitmq.planner.options import Options
from splitmq.planner.state import DeviceState, TierState
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import Wants


@dataclass(frozen=True)
class Control:
    """The control loop's settings."""

    gain: float = 0.10  # predicted improvement of the objective worth a switch
    dwell_s: float = 10.0  # a plan stays at least this long unless it broke
    urgent: float = 0.5  # an improvement this large moves a plan before its dwell is over
    urgent_dwell_s: float = 2.0  # ... but not a plan younger than this
    rounds: int = 4  # turns over all devices, at most


@dataclass(frozen=True)
class Target:
    """One device to plan for: its state, wants, options and tiers, and its plan now."""

    device: str
    state: DeviceState
    wants: Wants
    options: Options
    tiers: dict[str, TierState]  # for its model version, without the others' load
    current: Plan | None  # in force now (None: none from the planner yet)


@dataclass(frozen=True)
class Usage:
    """Thread time per request an option takes of each tier, and its rate."""

    edge_ms: float = 0.0
    cloud_ms: float = 0.0
    rate: float = 0.0

    def erlangs(self, tier: str) -> float:
        return self.rate * (self.edge_ms if tier == "edge" else self.cloud_ms) / 1000


def plan_fleet(
    targets: list[Target], now: float, control: Control | None = None
) -> dict[str, Plan]:
    """The plans to publish, by device: those that change (see module docstring)."""
    control = control or Control()
    ordered = sorted(targets, key=lambda t: t.device)
    plans = {t.device: t.current for t in ordered}
    usage = {
        t.device: _usage(t, t.current, assess(t.options, t.state, t.tiers, t.wants).costs)
        for t in ordered
    }
    for _ in range(control.rounds):
        moved = False
        for t in ordered:
            others = [u for d, u in usage.items() if d != t.device]
            busy = {tier: sum(u.erlangs(tier) for u in others) for tier in t.tiers}
            decision = _decide(t, with_load(t.tiers, busy))
            chosen = _choose(t, plans[t.device], decision, now, control)
            if chosen is not plans[t.device]:
                plans[t.device], moved = chosen, True
            usage[t.device] = _usage(t, plans[t.device], decision.assessment.costs)
        if not moved:
            break
    return {
        t.device: plan.model_copy(update={"ts": now})
        for t in ordered
        if (plan := plans[t.device]) is not None and plan is not t.current
    }


def _choose(
    t: Target, current: Plan | None, decision: Decision, now: float, control: Control
) -> Plan:
    """The device's plan after this turn: ``current`` itself when it should stay."""
    if current is None:
        return decision.plan
    found = decision.assessment
    row = t.options.locate(current)
    if (
        row is None
        or not found.meets(row)
        or current.objective != found.objective
        or (current.model, current.version) != (decision.plan.model, decision.plan.version)
    ):
        return decision.plan  # broken, the battery changed the goal, another model or version

    if not current.alternatives and decision.plan.alternatives:
        return decision.plan  # made without a link estimate: no dwell holds it
    if current.same_option(decision.plan):
        return current
    now_score, best = float(found.score[row]), float(found.score[decision.row])
    gain = (now_score - best) / now_score if now_score > 0 else 0.0
    age = now - current.ts
    if current.fell_back and age >= control.dwell_s:
        return decision.plan  # the device's own fallback: back to the planner's choice
    if gain >= control.urgent and age >= control.urgent_dwell_s:
        return decision.plan  # the plan in force costs twice the best now: do not wait
    if age < control.dwell_s:
        return current
    return decision.plan if gain >= control.gain else current


def _decide(t: Target, tiers: dict[str, TierState]) -> Decision:
    try:
        return decide(t.options, t.state, tiers, t.wants, device_id=t.device)
    except Infeasible as exc:
        relaxed = t.wants.model_copy(update={"slo_ms": None, "max_bytes": None})
        best = decide(t.options, t.state, tiers, relaxed, device_id=t.device)
        reason = f"{exc}; best effort: {best.plan.reason}"
        return Decision(
            best.plan.model_copy(update={"reason": reason}),
            best.fixed,
            best.objective,
            best.considered,
            best.row,
            best.assessment,
        )


def _usage(t: Target, plan: Plan | None, costs: Costs) -> Usage:
    """What ``plan`` takes of each tier per second, from the costs it was weighed with."""
    row = None if plan is None or plan.device_only else t.options.locate(plan)
    if row is None:
        return Usage()
    edge, cloud = float(costs.edge_ms[row]), float(costs.cloud_ms[row])
    if not (math.isfinite(edge) and math.isfinite(cloud)):
        return Usage()  # through a tier that is gone: it loads nothing
    return Usage(edge, cloud, t.state.rate_rps)
