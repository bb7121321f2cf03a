"""Which plan a device runs: its own, the planner's, or a fallback.

``Plans`` holds the plan in force and the model version it runs; the next
frame takes whatever is in force then (requests in flight carry their own
route, so they finish under the plan they started with). A following
device (``splitmq device`` without ``--cut``/``--plan``) starts on the
device alone and switches to each plan the planner publishes, retained, on
``plan/<device>/<model>``; it keeps the last one while the planner is away.
Whatever the planner does, ``FALLBACK_AFTER`` timeouts in a row on a tier
make the device switch by itself to its plan's first alternative that
avoids that tier (device-only is always among them), so a dead tier costs
a few requests, not every request until the planner notices. Likewise a
link that falls so far that one request of the plan alone would take longer
on it than the plan's device-only alternative takes in all (``too_slow``)
makes the device run alone at once: on such a link its telemetry queues
behind its requests for seconds, so the planner hears of the drop late.

When the planner cannot plan for the model (no profile, not calibrated) it
still publishes a plan: device-only, with no ``objective``, its ``reason``
saying why and what to run. The device runs it, says so once as a WARNING
and keeps the reason in ``Plans.refused`` (``splitmq device`` prints it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from splitmq.shared.errors import SplitMQError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion, parse_ref
from splitmq.shared.protocol.plan import FELL_BACK, Option, Plan
from splitmq.shared.protocol.reading import Rejected, read_plan
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.transport.messages import Message

log = logging.getLogger(__name__)

FALLBACK_AFTER = 3
NO_PLAN_YET = "no plan from the planner yet: on the device"
#: Plan switches a device remembers (the demo's timeline reads them).
SWITCHES_KEPT = 256
#: How a switch's reason begins when the planner, or the device's own fallback, chose it.
FROM_PLANNER = "planner: "


@dataclass(frozen=True)
class Switch:
    """One change of plan: when, from what to what, and why."""

    t: float  # unix time
    old: Plan
    new: Plan
    reason: str

    @property
    def source(self) -> str:
        """Who chose the new plan: the planner, the device's fallback, or its caller."""
        if self.reason.startswith(FROM_PLANNER):
            return "planner"
        return "fallback" if self.reason.startswith(FELL_BACK) else "caller"


class Fallback:
    """Consecutive timeouts per tier, and the alternative to take when they add up."""

    def __init__(self, after: int = FALLBACK_AFTER) -> None:
        self.after = after
        self._misses: dict[str, int] = {}
        self._lock = threading.Lock()

    def answered(self, tier: str) -> None:
        with self._lock:
            self._misses.pop(tier, None)

    def timed_out(self, plan: Plan, tier: str) -> tuple[Option, str] | None:
        """The alternative to switch to (and why) once ``tier`` missed ``after`` in a row."""
        with self._lock:
            self._misses[tier] = self._misses.get(tier, 0) + 1
            if self._misses[tier] < self.after or tier not in plan.tiers:
                return None
            self._misses.pop(tier)
        for option in plan.alternatives:
            if tier not in option.tiers:
                return option, f"{FELL_BACK}{self.after} requests to the {tier} timed out in a row"
        return None

    @staticmethod
    def too_slow(plan: Plan, bps: float) -> tuple[Option, str] | None:
        """The device-only alternative, when one request of ``plan`` alone takes longer on
        an uplink of ``bps`` than that alternative in all (whose prediction does not depend
        on the link): no planner minimising latency could still prefer ``plan``."""
        if plan.device_only or plan.predicted is None or plan.objective != "latency":
            return None
        local = next((o.predicted for o in plan.alternatives if o.device_only), None)
        send_ms = plan.predicted.bytes * 8000 / bps
        if local is None or send_ms <= local.latency_ms:
            return None
        option = next(o for o in plan.alternatives if o.device_only)
        return option, (
            f"{FELL_BACK}the uplink fell to {bps / 1e6:.3g} Mbit/s: a request "
            f"({plan.predicted.bytes / 1000:.0f} kB) takes {send_ms:.0f} ms on it, running on "
            f"the device {local.latency_ms:.0f} ms"
        )


class Plans:
    """The plan in force on one device, and every way it changes (see module docstring)."""

    def __init__(
        self,
        device: str,
        plan: Plan,
        sessions: SessionCache,
        topics: Topics,
        on_switch: Callable[[Switch], None],
    ) -> None:
        self.device, self.sessions, self.on_switch = device, sessions, on_switch
        self.topics = topics
        self._lock = threading.Lock()
        self._plan, self._mv = plan, self._model_of(plan)
        self.switches: deque[Switch] = deque(maxlen=SWITCHES_KEPT)
        self.refused: str | None = None  # why the planner cannot plan for us, while it cannot
        self.family: str | None = None  # the family the device follows (None: its model)
        self.fallback = Fallback()
        self._left: Plan | None = None  # the plan ``link`` already left
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"{device}-switch")

    def current(self) -> tuple[Plan, ModelVersion]:
        with self._lock:
            return self._plan, self._mv

    @property
    def plan(self) -> Plan:
        return self.current()[0]

    def warm(self) -> None:
        plan, mv = self.current()
        self._warm(plan, mv)

    def switch(self, plan: Plan, reason: str | None = None) -> bool:
        """Run ``plan`` from the next frame on (its head loaded first); False if it is
        the plan in force already."""
        mv = self._model_of(plan)
        self._warm(plan, mv)
        with self._lock:
            old = self._plan
            if old == plan:
                return False
            self._plan, self._mv = plan, mv
        change = Switch(time.time(), old, plan, reason or plan.reason)
        self.switches.append(change)
        log.info("%s: plan %s -> %s (%s)", self.device, old.words, plan.words, change.reason)
        self.on_switch(change)
        return True

    def received(self, msg: Message) -> None:
        """A plan from the planner on this device's plan topic, checked by the one plan
        reader (network thread: the switch happens on a thread of ours)."""
        heard = read_plan(self.topics, msg.topic, msg.payload)
        if isinstance(heard, Rejected):
            log.warning("%s: ignoring a plan: %s", self.device, heard.why)
        elif heard.doc is not None and heard.doc.family != self.family:
            log.warning(
                "%s: ignoring a plan for family %s: it follows %s",
                self.device,
                heard.doc.family,
                f"family {self.family}" if self.family else "its model",
            )
        elif heard.doc is not None:  # None: a retained plan was cleared
            self._worker.submit(self._from_planner, heard.doc)

    def _from_planner(self, plan: Plan) -> None:
        """Run the planner's plan, saying once when it is the planner's refusal to plan."""
        planned = plan.objective is not None  # None: the planner did not plan this one
        if not planned and self.refused != plan.reason:
            log.warning(
                "%s: the planner cannot plan for %s v%d, so it runs on the device alone: %s",
                self.device,
                plan.model,
                plan.version,
                plan.reason,
            )
        self.refused = None if planned else plan.reason
        self._safely(plan, f"{FROM_PLANNER}{plan.reason}")

    def timed_out(self, tier: str) -> None:
        """A request to ``tier`` got no answer at all: maybe fall back."""
        plan = self.plan
        step = self.fallback.timed_out(plan, tier)
        if step is not None:
            option, why = step
            self._worker.submit(self._safely, plan.fallback(option, why), why)

    def link(self, bps: float) -> None:
        """The uplink estimate is ``bps`` now: run alone if the plan became hopeless."""
        with self._lock:  # once per plan: samples keep coming while the switch is under way
            plan = self._plan
            if plan is self._left or (step := self.fallback.too_slow(plan, bps)) is None:
                return
            self._left = plan
        option, why = step
        self._worker.submit(self._safely, plan.fallback(option, why), why)

    def unreachable(self, tier: str) -> None:
        """The broker says nobody serves ``tier`` now: fall back at once."""
        plan = self.plan
        option = next((o for o in plan.alternatives if tier not in o.tiers), None)
        if tier in plan.tiers and option is not None:
            why = f"{FELL_BACK}no {tier} worker is subscribed"
            self._worker.submit(self._safely, plan.fallback(option, why), why)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _safely(self, plan: Plan, reason: str) -> None:
        try:
            self.switch(plan, reason)
        except SplitMQError as exc:
            log.warning("%s: cannot run plan %s: %s", self.device, plan.words, exc)

    def _model_of(self, plan: Plan) -> ModelVersion:
        mv = self.sessions.model(plan.model, plan.version)
        mv.check_cut(plan.cut)
        return mv

    def _warm(self, plan: Plan, mv: ModelVersion) -> None:
        if plan.cut > 0:
            self.sessions.segment(mv, 0, plan.cut)  # load and warm the head now


def starting_plan(pool: ModelPool, ref: str) -> tuple[Plan, str | None]:
    """What a following device given ``ref`` runs until the planner speaks, and the family
    it asks the planner to choose from: a family's smallest member (a device given a
    family is often the one that cannot afford the largest), or the model itself."""
    if ref in pool.families():
        smallest = min(pool.family(ref), key=lambda mv: mv.cuts[-1].macs_before)
        return local_plan(smallest), ref
    return local_plan(pool.get(*parse_ref(ref))), None


def local_plan(mv: ModelVersion) -> Plan:
    """What a following device runs until the planner has spoken: everything itself."""
    return make_plan(mv, mv.last_cut, "raw", reason=NO_PLAN_YET)
