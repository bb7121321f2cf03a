"""splitmq.planner: the cost model and optimiser that choose each device's plan.

Pure: no MQTT, no threads. ``Options.of(model_version)`` enumerates every
option of a model once (cuts, codecs, routes, exit thresholds, from its
profile and calibration table); ``decide(options, device, tiers, wants)``
costs them all for one device state and returns the ``Decision``: the plan,
its prediction, its alternatives and the fixed strategies it beat.
docs/planner.md explains the model and its measured error.
"""

from splitmq.planner.cost import Costs, evaluate
from splitmq.planner.decide import LOW_BATTERY, Decision, Infeasible, decide
from splitmq.planner.options import KINDS, NotReady, Options
from splitmq.planner.state import DeviceState, Overheads, TierState
from splitmq.shared.units import Link

__all__ = [
    "KINDS",
    "LOW_BATTERY",
    "Costs",
    "Decision",
    "DeviceState",
    "Infeasible",
    "Link",
    "NotReady",
    "Options",
    "Overheads",
    "TierState",
    "decide",
    "evaluate",
]
