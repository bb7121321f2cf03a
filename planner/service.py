"""`splitmq planner`: the control loop over MQTT.

The service subscribes to every role's retained telemetry and to every
retained plan (its own, read back), and holds nothing else: a restarted
planner reads the same documents and, by the same rule
(``control.plan_fleet``), keeps the same plans. Each change wakes the loop;
it waits ``settle_s`` for related changes (a tier's workers going offline
together), then plans every online device and publishes, retained, the
plans that changed. It also re-plans every ``period_s``, so a plan whose
dwell time has passed can move. A device whose model version cannot be planned
for (no profile, not calibrated) gets a device-only plan whose ``reason`` says
why and what to run; the planner reads the version again every round and
plans for it once it is ready. A role that appears or goes offline (a
Last Will), or a device whose uplink estimate jumps 2x, is planned for at
once; routine telemetry (every device's, every period) waits until
``min_gap_s`` after the last round, so a crowd of devices does not keep the
planner planning.

Telemetry and plans are read by ``protocol.reading``, as the dashboard reads
them. A document that does not parse, or that names another role, id, device or
model than its topic (forged), is dropped with a log line and counted in the
planner's own telemetry (``errors``); the planner keeps serving. A plan topic
holding such a document, or cleared, holds no plan of ours: the next round
publishes one there again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

from splitmq.planner.control import Control, Target, plan_fleet
from splitmq.planner.decide import Decision, decide
from splitmq.planner.fleet import device_state, in_force, telemetry_news, tier_states
from splitmq.planner.members import Member, best_plans, choose
from splitmq.planner.metrics import PlannerMetrics
from splitmq.planner.options import NotReady, Options
from splitmq.planner.state import DeviceState, TierState
from splitmq.planner.wan import Wan
from splitmq.shared.errors import SplitMQError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.announce import parse_announcement
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.reading import Heard, Rejected, read_plan, read_telemetry
from splitmq.shared.protocol.sites import bridge_state
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    PlannerTelemetry,
    TelemetryDoc,
    Wants,
    WorkerTelemetry,
)
from splitmq.shared.protocol.topics import BROKER_DROPPED
from splitmq.shared.settings import Settings
from splitmq.shared.transport.messages import Message
from splitmq.shared.transport.mqtt import MqttClient
from splitmq.shared.transport.telemetry import TelemetryPublisher
from splitmq.shared.units import Link

log = logging.getLogger(__name__)


class PlannerService:
    """The planner role (see module docstring). Use as a context manager."""

    def __init__(
        self,
        settings: Settings,
        planner_id: str | None = None,
        *,
        control: Control | None = None,
        links: dict[str, Link] | None = None,
        speeds: dict[str, float] | None = None,
        period_s: float = 2.0,
        min_gap_s: float = 1.0,
        settle_s: float = 0.05,
        telemetry_period_s: float = 5.0,
    ) -> None:
        self.settings, self.topics = settings, settings.topics
        self.id = planner_id or f"planner-{uuid.uuid4().hex[:8]}"
        self.control = control or Control()
        self.links, self.speeds = links or {}, speeds or {}
        self.wan = Wan(settings.site)
        self.period_s, self.min_gap_s, self.settle_s = period_s, min_gap_s, settle_s
        self.pool = ModelPool(settings.pool)
        self.client = MqttClient(
            settings.connection(self.id),
            will=TelemetryPublisher.will(self.topics, "planner", self.id),
        )
        self.telemetry = TelemetryPublisher(
            self.client, self.topics, "planner", self.id, self._status, telemetry_period_s
        )
        self.metrics = PlannerMetrics(self._status)
        self._docs: dict[tuple[str, str], TelemetryDoc] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        self._options: dict[tuple[str, int], Options | NotReady] = {}
        self._refused: dict[tuple[str, int], str] = {}  # the reasons logged, per version
        self._newest: dict[str, int] = {}  # model -> newest announced version in our pool
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{self.id}-loop", daemon=True)
        self.published = 0
        self.errors: Counter[str] = Counter()
        self.replans = 0
        self.broker_dropped: int | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> PlannerService:
        self.client.connect()
        self.client.subscribe(self.topics.plans_all(), self._on_plan, qos=1)
        self.client.subscribe(self.topics.telemetry_filter(), self._on_telemetry, qos=1)
        self.client.subscribe(self.topics.models_filter(), self._on_model, qos=1)
        self.client.subscribe(BROKER_DROPPED, self._on_dropped, qos=0)
        if self.wan.site is not None:
            self.client.subscribe(bridge_state(self.wan.site), self._on_bridge, qos=0)
        self.telemetry.start()
        self._thread.start()
        log.info("%s planning from %s", self.id, self.topics.telemetry_filter())
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.telemetry.stop()
        self.client.close()

    def __enter__(self) -> PlannerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- network thread: parse, remember, wake the loop ----------------------------------

    def _on_dropped(self, msg: Message) -> None:
        """Mosquitto's dropped-message count: any rise means a queue overflowed somewhere,
        so a request or an answer was lost without a word to anyone: say so loudly."""
        try:
            count = int(msg.payload)
        except ValueError:
            log.warning("%s: $SYS dropped count is not a number: %r", self.id, msg.payload[:40])
            return
        before, self.broker_dropped = self.broker_dropped or 0, count
        if count > before:  # mosquitto says it only when it changes: the first may be old
            log.warning(
                "%s: the broker dropped %d message(s) (%d since it started): a client's "
                "queue is full (max_queued_messages, docs/topics.md)",
                self.id,
                count - before,
                count,
            )

    def _on_bridge(self, msg: Message) -> None:
        if self.wan.heard(msg.payload):
            self._urgent.set()  # plan the site's devices off (or back onto) the cloud now
            self._wake.set()

    def _on_telemetry(self, msg: Message) -> None:
        heard = read_telemetry(self.topics, msg.topic, msg.payload)
        if isinstance(heard, Rejected):
            self.errors["bad_telemetry"] += 1
            log.warning("%s: rejected telemetry: %s", self.id, heard.why)
            return
        if heard.key[0] == "planner":
            return
        with self._lock:
            before = self._docs.get(heard.key)
            if heard.doc is None:  # a cleared retained topic: the role is gone for good
                self._docs.pop(heard.key, None)
            else:
                self._docs[heard.key] = heard.doc
        if telemetry_news(before, heard.doc):
            self._urgent.set()  # a role came or went, or a link changed a lot: plan now
        self._wake.set()

    def _on_model(self, msg: Message) -> None:
        """A new model version: devices on an older one move to it at the next round."""
        try:
            news = parse_announcement(self.topics, msg.topic, msg.payload)
            if news is None:
                return
            self.pool.matching(news.name, news.version, news.sha256)
        except SplitMQError as exc:
            self.errors["bad_model"] += 1
            log.warning("%s: ignoring a model announcement: %s", self.id, exc)
            return
        name = news.name
        with self._lock:  # new or re-calibrated: read its manifests again either way
            self._options = {k: v for k, v in self._options.items() if k[0] != name}
            newer = news.version > self._newest.get(name, 0)
            self._newest[name] = max(news.version, self._newest.get(name, 0))
        moving = ": moving its devices to it" if newer else " again: re-reading it"
        log.info("%s: %s v%d announced%s", self.id, name, news.version, moving)
        self._urgent.set()
        self._wake.set()

    def _on_plan(self, msg: Message) -> None:
        heard = read_plan(self.topics, msg.topic, msg.payload)
        if isinstance(heard, Rejected):
            self.errors["bad_plan"] += 1
            log.warning("%s: ignoring a retained plan: %s", self.id, heard.why)
            if heard.key is None:
                return
            heard = Heard(heard.key, None)  # the topic holds no plan of ours now
        with self._lock:  # no plan there: the next round publishes one
            if heard.doc is None:
                self._plans.pop(heard.key, None)
            else:
                self._plans[heard.key] = heard.doc

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.period_s)
            # Routine changes (a device's periodic telemetry) wait for the next slot;
            # a role going away or appearing does not.
            while not self._urgent.is_set() and not self._stop.is_set():
                left = last + self.min_gap_s - time.monotonic()
                if left <= 0 or self._urgent.wait(left):
                    break
            if self._stop.is_set():
                return
            time.sleep(self.settle_s)  # let a burst of related changes arrive together
            self._wake.clear()
            self._urgent.clear()
            last = time.monotonic()
            try:
                self.replan()
            except Exception:  # a bug must not stop the loop: log it and plan again later
                self.errors["internal"] += 1
                log.exception("%s: planning failed", self.id)

    def replan(self) -> list[Plan]:
        """Plan every online device now; publish and return the plans that changed."""
        with self._lock:
            docs, plans, newest = dict(self._docs), dict(self._plans), dict(self._newest)
            # A version not ready is read again: profiled and calibrated since, it is planned
            # for without a restart or an announcement.
            self._options = {k: v for k, v in self._options.items() if isinstance(v, Options)}
        workers = self.wan.reachable(d for d in docs.values() if isinstance(d, WorkerTelemetry))
        devices = sorted(
            (d for d in docs.values() if isinstance(d, DeviceTelemetry)), key=lambda d: d.id
        )
        targets, fixed = [], []
        families = {doc.id: doc.family for doc in devices if doc.family is not None}
        for doc in devices:
            retained = plans.get((doc.id, doc.family or doc.model.model))
            version = max(doc.model.version, newest.get(doc.model.model, 0))
            found = (
                self._member(doc, workers, retained)
                if doc.family is not None
                else self._options_of(doc.model.model, version)
            )
            if isinstance(found, NotReady):
                made = None if retained is None else (retained.reason, retained.version)
                if made != (str(found), version):
                    refusal = self._refusal(doc.id, doc.model.model, version, found)
                    if refusal is not None:
                        fixed.append(refusal.model_copy(update={"family": doc.family}))
                continue
            options, wants, state = (
                found if isinstance(found, tuple) else (found, doc.wants, device_state(doc, found))
            )
            targets.append(
                Target(
                    device=doc.id,
                    state=state,
                    wants=wants,
                    options=options,
                    tiers=self._tiers(workers, options),
                    current=in_force(doc, retained),
                )
            )
        planned = plan_fleet(targets, time.time(), self.control)
        changed = [
            plan.model_copy(update={"family": families.get(device)})
            for device, plan in planned.items()
        ] + fixed
        for plan in changed:
            self.metrics.published(plan, plans, ready=plan not in fixed)
            self._publish(plan)
        self.replans += 1
        return changed

    def _options_of(self, model: str, version: int) -> Options | NotReady:
        """The version's options, read once (a version not ready is read again each round,
        see ``replan``); each new reason not to plan is logged once."""
        key = (model, version)
        if key not in self._options:
            try:
                found: Options | NotReady = Options.of(self.pool.get(model, version))
            except NotReady as exc:
                found = exc
            except SplitMQError as exc:
                found = NotReady(str(exc))
            if isinstance(found, NotReady) and self._refused.get(key) != str(found):
                log.error("%s: cannot plan for %s: %s", self.id, model, found)
                self._refused[key] = str(found)
            self._options[key] = found
        return self._options[key]

    def _member(
        self, doc: DeviceTelemetry, workers: list[WorkerTelemetry], retained: Plan | None
    ) -> tuple[Options, Wants, DeviceState] | NotReady:
        """The options of the family member the device should run (``members``), with the
        floor that member's own plans keep and the device as it was costed."""
        assert doc.family is not None
        try:
            family = self.pool.family(doc.family)
        except SplitMQError as exc:
            return NotReady(str(exc))
        ready = {}
        for mv in family:
            options = self._options_of(mv.name, mv.version)
            if isinstance(options, Options) and mv.manifest.quality is not None:
                ready[mv.name] = Member(options, mv.manifest.quality)
        if not ready:
            return NotReady(
                f"no member of family {doc.family} is profiled, calibrated and measured: run "
                f"`splitmq family measure {doc.family}` after calibrating its members"
            )
        # Every member is costed on one device, its speed corrected by the running member's
        # head times: else the running one alone looks slow and the choice swings.
        running = self._options_of(doc.model.model, doc.model.version)
        first = next(iter(ready.values())).options
        state = device_state(doc, running if isinstance(running, Options) else first)

        def decide_for(options: Options, wants: Wants) -> Decision:
            tiers = self._tiers(workers, options)
            return decide(options, state, tiers, wants, device_id=doc.id)

        choices = best_plans(ready, doc.wants, decide_for)
        if not choices:
            return NotReady(f"no member of family {doc.family} meets the device's wants")
        name = choose(choices, retained.model if retained else None, self.control.gain)
        return choices[name].options, choices[name].wants, state

    def _tiers(self, workers: list[WorkerTelemetry], options: Options) -> dict[str, TierState]:
        return tier_states(workers, options, self.wan.links(workers, self.links), self.speeds)

    def _refusal(self, device: str, model: str, version: int, why: NotReady) -> Plan | None:
        """The device-only plan that tells a device why it is not planned for (None: the
        pool lacks the version, so no plan can be made; logged with ``why`` already)."""
        try:
            mv = self.pool.get(model, version)
        except SplitMQError:
            return None
        return make_plan(mv, mv.last_cut, "raw", reason=str(why)).for_device(device)

    def _publish(self, plan: Plan) -> None:
        assert plan.device is not None
        topic = self.topics.plan(plan.device, plan.topic_model)
        self.client.publish(topic, plan.to_json(), qos=1, retain=True, json=True)
        with self._lock:
            self._plans[(plan.device, plan.topic_model)] = plan
        self.published += 1
        log.info("%s: plan for %s: %s", self.id, plan.device, plan.reason)

    def _status(self, ts: float) -> PlannerTelemetry:
        with self._lock:
            devices = sum(isinstance(d, DeviceTelemetry) for d in self._docs.values())
        return PlannerTelemetry(
            id=self.id,
            ts=ts,
            rps=0.0,
            in_flight=0,
            errors=dict(self.errors),
            devices=devices,
            plans=self.published,
            broker_dropped=self.broker_dropped,
            wan_up=self.wan.up,
        )
