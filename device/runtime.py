"""The device runtime: run the head, compress, publish, and match the answers.

``Device.submit(frame)`` preprocesses a frame, runs the device partition of
the current plan, encodes the tensor at the cut and publishes a source-routed
request (QoS 1, request id as correlation data, an expiry). At most
``window`` requests are in flight (pipelining); results and errors are
matched by id (``flights``): a request with no answer in ``timeout_s`` is
sent once more (same id) and then fails visibly; nothing simply vanishes. A
device-only plan (cut = the output) never touches the network.

The plan can change while the device runs (``switch``: the planner's plan,
or a fallback, ``follow``): each request carries the route it was sent
with, so requests in flight finish under the plan they started with and
the next frame takes the new one.

The runtime composes small parts: ``follow.Plans`` (the plan in force),
``sender.Sender`` (publish and read acknowledgements), ``replies.Replies``
(how each request ends), ``flights`` (in flight, retries, the window),
``estimates``/``probe`` (the link) and ``status`` (telemetry from a
``Snapshot``). What surrounds the device, real or emulated by the lab, plugs
in as ``Conditions``.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout

import numpy as np

from splitmq.device.answers import Answer, InferenceFailed
from splitmq.device.conditions import Conditions, Direct
from splitmq.device.flights import JITTER, Flight, Flights, Timeouts, Window
from splitmq.device.follow import Plans, Switch
from splitmq.device.head import Head
from splitmq.device.local import Fallback, Local, Pending
from splitmq.device.metrics import DeviceMetrics
from splitmq.device.probe import Prober
from splitmq.device.replies import Replies
from splitmq.device.sender import Sender
from splitmq.device.status import EarlyReports, Snapshot, device_telemetry
from splitmq.shared.errors import LoginRefused, SplitMQError, UserError
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import DeviceTelemetry, LinkEstimate, ModelRef, Power, Wants
from splitmq.shared.protocol.wire import DeviceTiming, Request, Timing
from splitmq.shared.runtime.executor import HopExecutor
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats
from splitmq.shared.settings import Settings
from splitmq.shared.transport.estimates import LinkEstimator
from splitmq.shared.transport.mqtt import MqttClient
from splitmq.shared.transport.telemetry import TelemetryPublisher

log = logging.getLogger(__name__)

#: The device's session outlives a reconnect this long: answers wait for it meanwhile.
SESSION_EXPIRY_S = 60
#: How long closing waits for the broker to take the results the device answered itself.
FLUSH_S = 5.0
#: Failures that say the tier is overloaded: the window halves.
OVERLOAD = frozenset({"timeout", "expired"})


class Device:
    """One device (see module docstring). Use as a context manager."""

    def __init__(
        self,
        settings: Settings,
        device_id: str,
        plan: Plan,
        *,
        conditions: Conditions | None = None,
        window: int = 4,
        timeout_s: float = 10.0,
        retries: int = 2,
        wants: Wants | None = None,
        power: Power | None = None,
        follow: bool = False,
        telemetry_period_s: float = 5.0,
        family: str | None = None,
        fallback: Fallback = "local",
        connect_patience_s: float | None = 0.0,
    ) -> None:
        self.settings, self.id = settings, device_id
        self.fallback = fallback  # what ``infer`` does past its deadline
        self.patience_s = connect_patience_s  # for a broker not up yet (None: forever)
        self.family = family  # following: the planner picks which member runs
        self.topics = settings.topics
        sessions = SessionCache(ModelPool(settings.pool), settings.threads, settings.providers)
        self.plans = Plans(device_id, plan, sessions, self.topics, self._switched)
        self.plans.family = family
        self.conditions: Conditions = conditions or Direct()
        self.head = Head(HopExecutor(sessions, settings.max_payload_bytes), self.conditions)
        self.follow = follow
        self.timeout_s = timeout_s
        self.stats: Stats[str] = Stats()
        self.estimates = LinkEstimator()
        self.reports = EarlyReports(self.estimates, self._publish_telemetry)
        self.power = power or Power()
        self.wants = wants or Wants()
        self.timeouts = Timeouts(timeout_s)
        self.flights = Flights(
            self.timeouts,
            retries,
            self._resend,
            lambda flight: self.replies.expire(flight),
            f"{device_id}-flights",
            online=lambda: self.client is not None and self.client.connected,
        )
        self.replies = Replies(
            device_id,
            self.flights,
            self.timeouts,
            self.plans,
            self.stats,
            self.estimates,
            self.conditions,
            self.power,
            settings.max_payload_bytes,
        )
        self.local = Local(
            device_id, self.head, self.stats, self.conditions, self.power, lambda: self.sender
        )
        self._window = Window(window)
        self._closed = False
        self.client: MqttClient | None = None
        self.sender: Sender | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.prober: Prober | None = None
        self._period = telemetry_period_s
        self.metrics = DeviceMetrics(self._telemetry, self.stats, lambda: self._window.size)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Device:
        self.conditions.start(self.id)
        self.plans.warm()
        self.client = MqttClient(
            self.settings.connection(self.id),
            will=TelemetryPublisher.will(self.topics, "device", self.id),
            session_expiry_s=SESSION_EXPIRY_S,  # answers wait for a device briefly away
        )
        self.sender = Sender(
            self.id,
            self.topics,
            self.client,
            self.conditions,
            lambda request_id, error: self.replies.finish(request_id, error=error),
            self.plans.unreachable,
            self.metrics.uplink.inc,
            self.estimates,
            self._link_sampled,
        )
        try:
            self.client.connect(patience_s=self.patience_s)
        except LoginRefused as exc:
            raise self._refused(exc) from exc
        # not its own answers, which it publishes there too
        self.client.subscribe(
            self.topics.result(self.id), self.replies.on_result, qos=1, no_local=True
        )
        self.client.subscribe(self.topics.error(self.id), self.replies.on_error, qos=1)
        self.telemetry = TelemetryPublisher(
            self.client, self.topics, "device", self.id, self._telemetry, self._period
        )
        self.telemetry.start()
        self.flights.start()
        self.prober = Prober(
            self.client,
            self.topics.probe(self.id),
            self.estimates,
            lambda: self.plan.device_only,
            self.flights.oldest,
            self.conditions,
            self._link_sampled,
            f"{self.id}-probe",
            self.metrics.probes.inc,
        )
        self.prober.start()
        if self.follow:
            self.client.subscribe(
                self.topics.plan(self.id, self.family or self.mv.name),
                self.plans.received,
                qos=1,
            )
        return self

    def _refused(self, exc: LoginRefused) -> LoginRefused:
        """The broker's refusal, with the likely cause when this device's id is not the
        user name it logs in as (a secure broker binds each device's login to its id)."""
        user = self.settings.user
        if user is None or user == self.id:
            return exc
        return LoginRefused(
            f"{exc}; device {self.id!r} logs in as user {user!r}: with `splitmq secure` a "
            "device's id is its user name; leave --id out"
        )

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Wait for (or, with wait=False, fail) what is in flight, then disconnect."""
        limit = timeout if timeout is not None else self.longest_s()
        left = self.flights.close(limit if wait else 0.0)
        self._closed = True
        for f in left:
            f.future.set_exception(InferenceFailed(f.request.id, "cancelled", "device closed"))
        if self.prober:  # before the plans: its samples may still move the plan
            self.prober.stop()
        self.plans.close()
        if self.sender and (unsent := self.sender.flush(FLUSH_S if wait else 0.0)):
            log.warning("%s: closing with %d of its own results unsent", self.id, unsent)
        self.conditions.close()
        if self.telemetry:
            self.telemetry.stop()
        if self.client:
            self.client.close()

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    # --- plans -------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self.plans.plan

    @property
    def mv(self) -> ModelVersion:
        return self.plans.current()[1]

    def switch(self, plan: Plan, reason: str | None = None) -> bool:
        """Run ``plan`` from the next frame on (see ``follow.Plans.switch``)."""
        return self.plans.switch(plan, reason)

    def _switched(self, change: Switch) -> None:
        self.stats.count("switches")
        self.metrics.switched(change.source)
        self.head.forget()
        self._publish_telemetry()

    # --- inference -------------------------------------------------------------------

    def infer(self, frame: np.ndarray, timeout: float | None = None) -> Answer:
        """Synchronous: the answer for one frame, or InferenceFailed. ``timeout`` (s): a
        deadline through outages, past which the device answers itself or the request
        fails (``fallback``, see ``device.local``)."""
        if timeout is None:
            return self.submit(frame).result(timeout=self.longest_s() + 5)
        plan, mv = self.plans.current()
        local = self.fallback == "local"
        start_by = time.monotonic() + timeout - (self.local.lead_s(mv) if local else 0.0)
        why, future = f"no answer from {plan.words} within {timeout:g} s", None
        if start_by > time.monotonic():  # else no time to offload: the device answers now
            future = self._submit(frame, start_by - time.monotonic())
        try:
            if future is not None:
                return future.result(timeout=max(0.0, start_by - time.monotonic()))
        except FuturesTimeout:
            assert future is not None and future.request_id is not None
            late = InferenceFailed(future.request_id, "deadline", why)
            self.replies.finish(future.request_id, error=late)  # a later answer is counted
            if future.exception() is None:
                return future.result()  # it came just now
        except InferenceFailed as exc:
            if not local or exc.code == "cancelled" or self._closed:
                raise
            why = f"{plan.words} failed: {exc}"
        request_id = getattr(future, "request_id", None)
        if not local:
            raise InferenceFailed(request_id or "-", "deadline", why)
        return self.local.run(frame, mv, why, request_id)

    def longest_s(self) -> float:
        """The longest a request can take before it fails: every attempt timing out."""
        attempts = range(self.flights.retries + 1)
        return sum(self.timeout_s * 2**n * (1 + JITTER) for n in attempts)

    def submit(self, frame: np.ndarray) -> Future[Answer]:
        """Asynchronous: a Future of the Answer; blocks while the window is full."""
        future = self._submit(frame, None)
        assert future is not None
        return future

    def _submit(self, frame: np.ndarray, wait_s: float | None) -> Pending | None:
        """The request's future; None when the window stayed full for ``wait_s``."""
        if self._closed:
            raise UserError("the device is closed")
        if not self._window.acquire(wait_s):
            return None
        future = Pending()
        future.add_done_callback(self._released)
        try:
            self._send(frame, future)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, SplitMQError):
                raise
        return future

    def _released(self, future: Future) -> None:
        """The window learns from each request: its latency, or a timeout or overload."""
        if not future.cancelled() and future.exception() is None:
            self._window.release(future.result().e2e_ms / 1000)
            self.metrics.answered(future.result())
        else:
            self._window.release(congested=_overloaded(future))

    def _send(self, frame: np.ndarray, future: Pending) -> None:
        plan, mv = self.plans.current()
        work = self.head.run(frame, plan, mv)
        if work.tensor is None:
            self.local.answer(work, mv, future)
            return
        request = Request(
            id=uuid.uuid4().hex,
            device=self.id,
            model=mv.name,
            version=mv.version,
            cut=plan.cut,
            route=plan.route,
            hop=0,
            tensor=work.tensor,
            deadline=work.t_encoded + self.timeouts.base_s() * (1 + JITTER),
            timing=Timing(DeviceTiming(work.t_start, work.t_head, work.t_encoded, work.t_encoded)),
        )
        future.request_id = request.id
        flight = Flight(request, future, work.t_start)
        self.flights.add(flight)
        assert self.sender is not None, "start() the device first"
        self.sender.publish(flight)
        self.conditions.spent(self.power, work.t_encoded - work.t_start, len(work.tensor.data))

    def _resend(self, flight: Flight) -> None:
        self.stats.count("retries")
        log.info("request %s timed out; sending it again", flight.request.id)
        assert self.sender is not None
        self.sender.publish(flight)

    # --- telemetry ----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """This device's state now: what its telemetry and metrics say."""
        plan, mv = self.plans.current()
        return Snapshot(
            id=self.id,
            plan=plan,
            model=ModelRef(model=mv.name, version=mv.version),
            family=self.family,
            rps=self.stats.rate(),
            in_flight=len(self.flights),
            errors=self.stats.failures(),
            answered=self.stats.by_prefix("answered_"),
            latencies=self.stats.latencies(),
            own=self.head.timing.latencies(),
            link=LinkEstimate(
                uplink_bps=self.estimates.uplink_bps(),
                rtt_ms=self.estimates.rtt_ms(),
                age_s=self.estimates.age_s(),
            ),
            speed=self.conditions.speed,
            battery=self.conditions.battery(),
            power=self.power,
            wants=self.wants,
        )

    def _telemetry(self, ts: float) -> DeviceTelemetry:
        return device_telemetry(self.snapshot(), ts)

    def _link_sampled(self) -> None:
        """Tell the planner if the estimate moved; following it, leave a plan the link
        cannot carry (a plan given by the caller stays the caller's)."""
        self.reports.sampled()
        if self.follow and (bps := self.estimates.uplink_bps()) is not None:
            self.plans.link(bps)

    def _publish_telemetry(self) -> None:
        if self.telemetry:
            self.telemetry.publish()


def default_id(settings: Settings, prefix: str = "dev") -> str:
    """A device's id when none is given: the user name it logs in as (with `splitmq
    secure` the only id the broker lets it use), else ``<prefix>-<random>``."""
    return settings.user or f"{prefix}-{uuid.uuid4().hex[:8]}"


def _overloaded(future: Future) -> bool:
    exc = future.exception() if not future.cancelled() else None
    return isinstance(exc, InferenceFailed) and exc.code in OVERLOAD
