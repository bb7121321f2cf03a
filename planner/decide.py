"""The optimiser: the best option under the constraints, its alternatives, and why.

Every option is costed (``cost.evaluate``); those through a missing or
saturated tier, below the accuracy floor, over the byte budget or over the
latency SLO are dropped; the rest are ranked by the objective (ties: lower
latency, then the nearer tier). A device whose battery is below
``LOW_BATTERY`` is planned for energy whatever it asked, within its SLO.
When nothing is left, ``Infeasible`` names the constraint that emptied the
set and the best value within the others: never a silent best effort.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitmq.planner.cost import Costs, evaluate
from splitmq.planner.options import CLOUD, DEVICE, EDGE, FIXED_INPUTS, KINDS, Options
from splitmq.planner.state import DeviceState, Overheads, TierState
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.plan import Objective, Option, Plan, Prediction
from splitmq.shared.protocol.telemetry import Wants

#: Below this charge a device is planned for energy (its SLO still holds).
LOW_BATTERY = 0.2
#: Alternatives a plan carries, at most.
ALTERNATIVES = 4
#: What every plan is compared with: its name -> the input codec sent (None: device-only).
FIXED: dict[str, str | None] = {"device-only": None, **{f"input {c}": c for c in FIXED_INPUTS}}


#: The limits a device may set: its Wants field, the cost it bounds, how to name it, and
#: what the best option within the other constraints does when nothing meets it.
_LIMITS = (
    ("max_bytes", "bytes", "the byte budget of {:,} B", "sends the fewest bytes"),
    ("slo_ms", "latency_ms", "the latency SLO of {:g} ms", "is the fastest"),
)


class Infeasible(UserError):
    """No option meets the constraints; the message names the one that cannot be met."""


@dataclass(frozen=True)
class Assessment:
    """Every option costed for one device state, and what the device's wants make of it."""

    options: Options
    costs: Costs
    wants: Wants
    objective: Objective  # the one used: energy when the battery is low
    why: str  # why not the one asked for ("" when it is)
    score: np.ndarray  # the objective's value per option: lower is better
    accurate: np.ndarray  # available and at or above the accuracy floor

    def meets(self, row: int) -> bool:
        """Whether option ``row`` is available and meets every constraint."""
        if not self.accurate[row]:
            return False
        for field, measure, _, _ in _LIMITS:
            limit = getattr(self.wants, field)
            if limit is not None and getattr(self.costs, measure)[row] > limit:
                return False
        return True


def assess(
    options: Options,
    device: DeviceState,
    tiers: Mapping[str, TierState],
    wants: Wants | None = None,
    over: Overheads | None = None,
) -> Assessment:
    """Cost every option of ``options`` for ``device``, under its wants."""
    wants = wants or Wants()
    target = wants.accuracy_target
    costs = evaluate(options, device, tiers, wants.accuracy, over, target is not None)
    objective, why = _objective(device, wants)
    score = {"latency": costs.latency_ms, "energy": costs.energy_mj, "bytes": costs.bytes}[
        objective
    ]
    accurate = costs.available & (costs.agreement >= wants.accuracy - 1e-9)
    if target is not None:  # an exit threshold only where its measured accuracy meets it
        exits = ~np.isnan(options.threshold)
        with np.errstate(invalid="ignore"):
            accurate &= ~exits | (options.exit_accuracy >= target - 1e-9)
    return Assessment(options, costs, wants, objective, why, score, accurate)


@dataclass(frozen=True)
class Decision:
    """The plan, the fixed strategies' predictions, and how it was reached."""

    plan: Plan
    fixed: dict[str, Prediction]
    objective: Objective  # the one used: energy when the battery is low
    considered: int  # options costed
    row: int  # the chosen option
    assessment: Assessment
    #: For a model family: the best plan of each member not chosen (``planner.members``).
    members: Mapping[str, Plan] = dataclasses.field(default_factory=dict)

    @property
    def predicted(self) -> Prediction:
        assert self.plan.predicted is not None
        return self.plan.predicted

    def to_json(self) -> dict[str, Any]:
        """What ``splitmq plan --json`` prints; ``plan`` is a valid plan file as it is."""
        plan = self.plan.to_json_dict()
        return {
            "plan": plan,
            "predicted": plan["predicted"],
            "alternatives": plan["alternatives"],
            "fixed": {name: p.model_dump() for name, p in self.fixed.items()},
            **(
                {"members": {n: p.to_json_dict() for n, p in self.members.items()}}
                if self.members
                else {}
            ),
        }


def decide(
    options: Options,
    device: DeviceState,
    tiers: Mapping[str, TierState],
    wants: Wants | None = None,
    *,
    device_id: str | None = None,
    over: Overheads | None = None,
) -> Decision:
    """The best plan for ``device`` (see module docstring)."""
    found = assess(options, device, tiers, wants, over)
    costs, score, accurate, objective, why = (
        found.costs,
        found.score,
        found.accurate,
        found.objective,
        found.why,
    )
    wants = found.wants
    feasible = _feasible(options, costs, accurate, wants)
    order = _ranked(options, costs, score, np.flatnonzero(feasible))
    best = int(order[0])
    explain = _Describe(options, costs)
    fixed = {
        name: explain.prediction(i)
        for name, i in _fixed_rows(options, tiers).items()
        if costs.available[i]
    }
    what = {"latency": "fastest", "energy": "least energy", "bytes": "fewest bytes"}[objective]
    reason = (
        f"{why}{explain.option(best)}: the {what} of {int(feasible.sum()):,} options "
        f"meeting {_constraints(wants)}, {explain.costs(best)}"
        f"{_versus(fixed, explain.prediction(best))}"
    )
    alternatives = _alternatives(options, costs, score, accurate, feasible, best)
    plan = Plan(
        device=device_id,
        model=options.model,
        version=options.version,
        reason=reason,
        objective=objective,
        alternatives=tuple(explain.option_doc(i) for i in alternatives),
        **explain.option_fields(best),
    )
    return Decision(plan, fixed, objective, len(options), best, found)


def _objective(device: DeviceState, wants: Wants) -> tuple[Objective, str]:
    if device.battery is not None and device.battery < LOW_BATTERY and wants.objective != "energy":
        return "energy", (
            f"battery at {device.battery:.1%} (below {LOW_BATTERY:.0%}), so planned for "
            f"energy instead of {wants.objective}: "
        )
    return wants.objective, ""


def _accuracy_words(wants: Wants) -> str:
    words = f"≥ {wants.accuracy:.1%} agreement"
    if wants.accuracy_target is not None:
        words += f", exits ≥ {wants.accuracy_target:.1%} accuracy"
    return words


def _constraints(wants: Wants) -> str:
    parts = [_accuracy_words(wants)]
    if wants.max_bytes is not None:
        parts.append(f"≤ {wants.max_bytes:,} B")
    if wants.slo_ms is not None:
        parts.append(f"≤ {wants.slo_ms:g} ms")
    return " and ".join(parts)


def _feasible(options: Options, costs: Costs, accurate: np.ndarray, wants: Wants) -> np.ndarray:
    """Options meeting every constraint; ``Infeasible`` naming the one that cannot be met."""
    feasible, within = accurate.copy(), [_accuracy_words(wants)]
    for field, measure, describe, best_is in _LIMITS:
        limit = getattr(wants, field)
        if limit is None:
            continue
        metric: np.ndarray = getattr(costs, measure)
        name = describe.format(limit)
        left = feasible & (metric <= limit)
        if not left.any():
            i = int(np.flatnonzero(feasible)[np.argmin(metric[feasible])])
            explain = _Describe(options, costs)
            raise Infeasible(
                f"no option meets {name}: of the options with {' and '.join(within)}, "
                f"{explain.option(i)} {best_is} ({explain.costs(i)}); relax the constraint"
            )
        feasible = left
        within.append(name.removeprefix("the "))
    return feasible


def _ranked(options: Options, costs: Costs, score: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` best first: by score, then latency, then the nearer tier, then table order."""
    keys = (rows, options.kind[rows], costs.latency_ms[rows], score[rows])
    return rows[np.lexsort(keys)]


def _alternatives(
    options: Options,
    costs: Costs,
    score: np.ndarray,
    accurate: np.ndarray,
    feasible: np.ndarray,
    best: int,
) -> list[int]:
    """Ranked fallbacks: the best option of every other route kind (so a device always
    has one that avoids a failed tier, device-only included), then the runners-up."""
    chosen: list[int] = []
    for kind in range(len(KINDS)):
        rows = np.flatnonzero(accurate & (options.kind == kind))
        rows = rows[rows != best]
        if len(rows) and kind != options.kind[best]:
            chosen.append(int(_ranked(options, costs, score, rows)[0]))
    for i in _ranked(options, costs, score, np.flatnonzero(feasible)):
        if len(chosen) >= ALTERNATIVES:
            break
        if int(i) != best and int(i) not in chosen:
            chosen.append(int(i))
    ranked = _ranked(options, costs, score, np.array(chosen, dtype=np.int64))
    return [int(i) for i in ranked[:ALTERNATIVES]]


def _fixed_rows(options: Options, tiers: Mapping[str, TierState]) -> dict[str, int]:
    """The option row of each fixed strategy (inputs go to the edge, or the cloud without one)."""
    tier = CLOUD if "cloud" in tiers and "edge" not in tiers else EDGE
    rows = {}
    for name, codec in FIXED.items():
        i = options.DEVICE_ONLY if codec is None else options.find(tier, 0, codec)
        if i is not None:
            rows[name] = i
    return rows


def _versus(fixed: dict[str, Prediction], chosen: Prediction) -> str:
    parts = [f"{name} {p.latency_ms:.1f} ms" for name, p in fixed.items() if p != chosen]
    return f" (vs {', '.join(parts)})" if parts else ""


class _Describe:
    """Options as plan fields and as words."""

    def __init__(self, options: Options, costs: Costs) -> None:
        self.o, self.c = options, costs

    def prediction(self, i: int) -> Prediction:
        return Prediction(
            latency_ms=round(float(self.c.latency_ms[i]), 3),
            bytes=round(float(self.c.bytes[i]), 1),
            energy_mj=round(float(self.c.energy_mj[i]), 3),
            agreement=round(float(self.c.agreement[i]), 4),
        )

    def option_fields(self, i: int) -> dict[str, Any]:
        route = self.o.route(i, int(self.c.forward[i]))
        exit_threshold = route[0].exit if route else None
        return {
            "cut": self.o.cut(i),
            "codec": self.o.codec(i),
            "route": route,
            "exit": exit_threshold,
            "predicted": self.prediction(i),
        }

    def option_doc(self, i: int) -> Option:
        return Option(**self.option_fields(i))

    def costs(self, i: int) -> str:
        p = self.prediction(i)
        return (
            f"{p.latency_ms:.1f} ms, {p.bytes:,.0f} B, {p.energy_mj:.1f} mJ and "
            f"{p.agreement:.1%} measured agreement predicted"
        )

    def option(self, i: int) -> str:
        o = self.o
        kind = int(o.kind[i])
        if kind == DEVICE:
            return "the whole model on the device"
        cut, codec = o.cut(i), o.codec(i)
        sent = f"the input as {codec}" if cut == 0 else f"cut {cut} as {codec}"
        if kind in (EDGE, CLOUD):
            return f"{sent} to the {'edge' if kind == EDGE else 'cloud'}"
        hop = o.route(i, int(self.c.forward[i]))[0]
        if hop.exit is None:
            return (
                f"{sent} to the edge, which runs to cut {hop.to} and sends it as {hop.codec} "
                "to the cloud"
            )
        rate = float(o.p_exit[i])
        return (
            f"{sent} to the edge, which answers when an exit head is ≥ {hop.exit:g} confident "
            f"({rate:.0%} of requests) and sends the rest as cut {hop.to} in {hop.codec} "
            "to the cloud"
        )
