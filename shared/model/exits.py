"""What a multi-exit model's exits are worth on labelled data: the manifest's ``exits``.

Measured once, offline, on a labelled test split (``offline.exit_report``):
each exit head's temperature (fitted on a validation split disjoint from the
test split and folded into the exported graph, so a worker's max softmax is
the calibrated confidence) with its expected calibration error before and
after, and for each exit policy the curves a planner chooses thresholds
from. An early exit answers a sample when its score passes the threshold:
``max_softmax`` ≥ t, or ``entropy`` (normalised to 0..1) ≤ t; the first exit
that passes answers, the final output answers the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitmq.shared.model.calibration import Fraction
from splitmq.shared.protocol.document import Frozen

Policy = Literal["max_softmax", "entropy"]


class ExitInfo(Frozen):
    name: str  # the output
    cut: int  # where it is computed
    temperature: float = Field(gt=0)
    ece_before: Fraction
    ece_after: Fraction


class PolicyCurve(Frozen):
    """At ``thresholds[i]``: ``exit_rate[i][k]`` of all samples answer at exit k,
    ``exited_accuracy[i]`` of those answers are right (None: none), and ``accuracy[i]``
    is what is delivered overall when the final output answers the rest."""

    policy: Policy
    thresholds: list[float]
    exit_rate: list[list[Fraction]]
    exited_accuracy: list[Fraction | None]
    accuracy: list[Fraction]


class ExitReport(Frozen):
    data: str  # which labelled samples
    samples: int = Field(ge=1)
    validation: str  # what the temperatures were fitted on
    exits: list[ExitInfo]
    curves: list[PolicyCurve]
    final_accuracy: Fraction
    final_ece: Fraction

    def curve(self, policy: Policy) -> PolicyCurve:
        return next(c for c in self.curves if c.policy == policy)
