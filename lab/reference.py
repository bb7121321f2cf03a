"""The best fixed plan for a link, measured: what a scenario holds the planner against.

The shortlist is device-only and the planner's own ranking for that link
(its plan and the next alternatives, from the model's profile and
calibration), so nothing here names a cut of a particular model. Each
candidate runs on a device of its own behind the same emulated link, one
request at a time, in turns, so that load and noise fall on all alike.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from splitmq.device.runtime import Device
from splitmq.lab.emulation import Emulated
from splitmq.planner import DeviceState, Options, TierState, decide
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import Wants
from splitmq.shared.runtime.stats import percentiles
from splitmq.shared.settings import Settings
from splitmq.shared.units import Link

#: The planner's alternatives measured besides its plan.
ALTERNATIVES = 3
#: Turns of one frame per candidate (after one warm-up frame each).
TURNS = 9


def candidates(
    mv: ModelVersion, link: Link, speed: float, tiers: dict[str, TierState]
) -> dict[str, Plan]:
    """Device-only, the planner's plan for ``link`` and its next alternatives, by words."""
    decision = decide(Options.of(mv), DeviceState(speed=speed, link=link), tiers, Wants())
    chosen = decision.plan
    shortlist = {"device-only": make_plan(mv, mv.last_cut, "raw")}
    for option in (chosen, *chosen.alternatives[:ALTERNATIVES]):
        plan = chosen.fallback(option, "reference")
        shortlist.setdefault(plan.words, plan)
    return shortlist


def best_fixed(
    settings: Settings,
    mv: ModelVersion,
    link: Link,
    speed: float,
    tiers: dict[str, TierState],
    frames: list[np.ndarray],
) -> dict:
    """Each candidate's measured p50 over ``TURNS`` frames, and the best of them."""
    plans = candidates(mv, link, speed, tiers)
    times: dict[str, list[float]] = {name: [] for name in plans}
    with ExitStack() as stack:
        devs = {
            name: stack.enter_context(
                Device(
                    settings,
                    f"demo-ref{k}",
                    plan,
                    conditions=Emulated(link, speed, battery=None),
                    window=1,
                )
            )
            for k, (name, plan) in enumerate(plans.items())
        }
        for dev in devs.values():
            dev.infer(frames[0])
        for turn in range(TURNS):
            for name, dev in devs.items():
                times[name].append(dev.infer(frames[1 + turn]).e2e_ms)
    p50 = {name: (percentiles(ts) or {})["p50_ms"] for name, ts in times.items()}
    best = min(p50, key=p50.__getitem__)
    return {"link": str(link), "p50_ms": p50, "best": best, "best_ms": p50[best]}
