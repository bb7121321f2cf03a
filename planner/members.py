"""Which member of a model family a device runs.

Each member has its own options (its cuts, codecs, profile and calibration). A
member's plans are held against its own unsplit answers; the member itself gives
up ``1 - quality.agreement`` against the family's reference (the most accurate
member, ``offline.family``). So the accuracy floor a device asks for is split:
a member's plans must keep ``floor + (1 - agreement)`` of their own (a bound
built only from measured rates), and a member too poor for the floor is not a
candidate. Of the members' best plans the one best for the objective the device
is planned for runs (its battery may have made that energy, so a low battery
picks a cheaper member where the floor allows); the member in force stays unless
another is better by ``gain``, so estimates that wobble do not swap models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from splitmq.planner.decide import Decision, Infeasible
from splitmq.planner.options import Options
from splitmq.shared.model.manifest import Quality
from splitmq.shared.protocol.telemetry import Wants

#: What a plan's prediction says for each objective.
MEASURE = {"latency": "latency_ms", "energy": "energy_mj", "bytes": "bytes"}


@dataclass(frozen=True)
class Member:
    options: Options
    quality: Quality


@dataclass(frozen=True)
class Choice:
    """A member's best plan, with the floor its own plans had to keep."""

    options: Options
    wants: Wants
    decision: Decision
    agreement: float  # the member's own, with the family's reference

    @property
    def value(self) -> float:
        """The plan's predicted cost for the objective it was planned for."""
        plan = self.decision.plan
        assert plan.predicted is not None and plan.objective is not None
        return float(getattr(plan.predicted, MEASURE[plan.objective]))


def member_wants(wants: Wants, quality: Quality) -> Wants | None:
    """``wants`` with the floor a member's own plans must keep; None: the member alone
    falls short of the floor."""
    floor = wants.accuracy + (1 - quality.agreement)
    if floor > 1 + 1e-9:
        return None
    return wants.model_copy(update={"accuracy": min(1.0, floor)})


def best_plans(
    members: Mapping[str, Member],
    wants: Wants,
    decide: Callable[[Options, Wants], Decision],
) -> dict[str, Choice]:
    """Each member's best plan under its share of the floor (members that cannot meet
    the floor or the device's other limits left out)."""
    found: dict[str, Choice] = {}
    for name, member in members.items():
        own = member_wants(wants, member.quality)
        if own is None:
            continue
        try:
            decision = decide(member.options, own)
        except Infeasible:
            continue
        found[name] = Choice(member.options, own, decision, member.quality.agreement)
    if not found and (wants.slo_ms is not None or wants.max_bytes is not None):
        # No member meets the SLO or the byte budget: the best effort, as for one model.
        relaxed = wants.model_copy(update={"slo_ms": None, "max_bytes": None})
        return best_plans(members, relaxed, decide)
    return found


def choose(choices: Mapping[str, Choice], current: str | None, gain: float) -> str:
    """The member to run: the best plan's, unless the one in force is within ``gain``
    of it (ties: the more accurate member)."""
    best = min(choices, key=lambda n: (choices[n].value, -choices[n].agreement))
    if current is None or current not in choices:
        return best
    return current if choices[current].value <= choices[best].value * (1 + gain) else best
