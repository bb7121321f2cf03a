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
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from concurrent.futures import Future

import numpy as np

from splitmq.device.answers import Answer, InferenceFailed
from splitmq.device.battery import Battery
from splitmq.device.estimates import LinkEstimator
from splitmq.device.flights import JITTER, Flight, Flights, Timeouts, Window
from splitmq.device.follow import Plans, Switch
from splitmq.device.link import DelayLine, LinkSchedule, LinkSpec
from splitmq.device.probe import Prober
from splitmq.device.speed import emulate
from splitmq.device.status import device_telemetry, link_moved
from splitmq.shared.codecs import encode, parse_codec
from splitmq.shared.errors import SplitMQError, UserError, WireError
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import model_input
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.results import HopLatency, Result, unpack_error, unpack_result
from splitmq.shared.protocol.telemetry import Power, Wants
from splitmq.shared.protocol.wire import (
    CONTENT_TYPE_REQUEST,
    DeviceTiming,
    Request,
    Timing,
    expiry_interval,
    pack_request,
)
from splitmq.shared.runtime.executor import HopExecutor, Job, Outcome
from splitmq.shared.runtime.metrics import DeviceMetrics
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import NO_SUBSCRIBERS, NOT_AUTHORIZED, Message, MqttClient
from splitmq.shared.transport.telemetry import TelemetryPublisher

log = logging.getLogger(__name__)

#: At most this often, telemetry goes out early because the link estimate moved.
REPORT_EVERY_S = 0.5
#: The device's session outlives a reconnect this long: answers wait for it meanwhile.
SESSION_EXPIRY_S = 60
#: Failures that say the tier is overloaded: the window halves.
OVERLOAD = frozenset({"timeout", "expired"})
#: After a reconnect (a broker restart), workers may resubscribe after the device
#: does: "no subscribers" then means "not yet", and the attempt's timeout resends it.
RESUBSCRIBE_GRACE_S = 5.0


class Device:
    """One device (see module docstring). Use as a context manager."""

    def __init__(
        self,
        settings: Settings,
        device_id: str,
        plan: Plan,
        *,
        link: LinkSpec | LinkSchedule | None = None,
        speed: float = 1.0,
        window: int = 4,
        timeout_s: float = 10.0,
        retries: int = 2,
        battery: float | None = 1.0,
        battery_joules: float | None = None,
        wants: Wants | None = None,
        power: Power | None = None,
        follow: bool = False,
        telemetry_period_s: float = 5.0,
    ) -> None:
        if not 0 < speed <= 1:
            raise UserError(f"speed must be in (0, 1] (1 = this host), got {speed}")
        self.settings, self.id = settings, device_id
        self.topics = settings.topics
        self.sessions = SessionCache(ModelPool(settings.pool), settings.threads)
        self.executor = HopExecutor(self.sessions, settings.max_payload_bytes)
        self.plans = Plans(device_id, plan, self.sessions, self._switched)
        self.link = LinkSchedule.fixed(link) if isinstance(link, LinkSpec) else link
        self.speed, self.follow = speed, follow
        self.timeout_s = timeout_s
        self.stats: Stats[str] = Stats()
        self.timing: Stats[str] = Stats(window=32)  # this device's own work, recent frames
        self.estimates = LinkEstimator()
        self.power = power or Power()
        self.battery = None if battery is None else Battery(battery, self.power, battery_joules)
        self.wants = wants or Wants()
        self.timeouts = Timeouts(timeout_s)
        self.flights = Flights(
            self.timeouts,
            retries,
            self._resend,
            self._expire,
            f"{device_id}-flights",
            online=lambda: self.client is not None and self.client.connected,
        )
        self._window = Window(window)
        self._failed: deque[str] = deque(maxlen=4096)  # ids that failed, to spot late answers
        self._closed = False
        self._uplink: DelayLine | None = None
        self._downlink: DelayLine | None = None
        self.client: MqttClient | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.prober: Prober | None = None
        self._period = telemetry_period_s
        self._reported: tuple[float | None, float | None] = (None, None)
        self._reported_at = 0.0
        self._started = time.monotonic()
        self.started_at = time.time()  # when its link schedule began (set again on start)
        self.metrics = DeviceMetrics(
            lambda ts: device_telemetry(self, ts), self.stats, lambda: self._window.size
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Device:
        self._started = time.monotonic()
        self.started_at = time.time()  # when its link schedule began
        self.plans.warm()
        if self.link:
            self._uplink = DelayLine(self.link, f"{self.id}-uplink")
            self._downlink = DelayLine(self.link, f"{self.id}-downlink")
        self.client = MqttClient(
            self.settings,
            self.id,
            will=TelemetryPublisher.will(self.topics, "device", self.id),
            session_expiry_s=SESSION_EXPIRY_S,  # answers wait for a device briefly away
        )
        self.client.connect()
        self.client.subscribe(self.topics.result(self.id), self._on_result, qos=1)
        self.client.subscribe(self.topics.error(self.id), self._on_error, qos=1)
        self.telemetry = TelemetryPublisher(
            self.client,
            self.topics,
            "device",
            self.id,
            lambda ts: device_telemetry(self, ts),
            self._period,
        )
        self.telemetry.start()
        self.flights.start()
        self.prober = Prober(
            self.client,
            self.topics.probe(self.id),
            self.estimates,
            lambda: self.plan.device_only,
            self._oldest,
            self._uplink,
            self._downlink,
            self._report_link,
            f"{self.id}-probe",
        )
        self.prober.start()
        if self.follow:
            self.client.subscribe(
                self.topics.plan(self.id, self.mv.name), self.plans.received, qos=1
            )
        return self

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Wait for (or, with wait=False, fail) what is in flight, then disconnect."""
        limit = timeout if timeout is not None else self.longest_s()
        left = self.flights.close(limit if wait else 0.0)
        self._closed = True
        for f in left:
            f.future.set_exception(InferenceFailed(f.request.id, "cancelled", "device closed"))
        self.plans.close()
        if self.prober:
            self.prober.stop()
        for line in (self._uplink, self._downlink):
            if line:
                line.close()
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
        self.timing.forget("head")  # it measured the old plan's head
        if self.telemetry:
            self.telemetry.publish()

    # --- inference -------------------------------------------------------------------

    def infer(self, frame: np.ndarray) -> Answer:
        """Synchronous: the answer for one frame, or InferenceFailed."""
        return self.submit(frame).result(timeout=self.longest_s() + 5)

    def longest_s(self) -> float:
        """The longest a request can take before it fails: every attempt timing out."""
        attempts = range(self.flights.retries + 1)
        return sum(self.timeout_s * 2**n * (1 + JITTER) for n in attempts)

    def submit(self, frame: np.ndarray) -> Future:
        """Asynchronous: a Future of the Answer; blocks while the window is full."""
        if self._closed:
            raise UserError("the device is closed")
        self._window.acquire()
        future: Future = Future()
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

    def _send(self, frame: np.ndarray, future: Future) -> None:
        plan, mv = self.plans.current()
        t_start, cpu_start = time.time(), time.thread_time()
        x = model_input(frame, mv, pixels=plan.cut == 0 and parse_codec(plan.codec).is_input)
        t_input = time.time()
        if plan.cut == 0:  # nothing to run here: send the input
            tensor = encode(x, plan.codec, mv.codec_params(0, plan.codec))
            t_pre, t_head, t_encoded = emulate(
                self.speed, t_start, cpu_start, t_input, t_input, time.time()
            )
        else:
            to = None if plan.device_only else plan.cut
            job = Job(mv.name, mv.version, 0, to, x, forward_codec=plan.codec)
            outcome = self.executor.execute([job])[0]
            if outcome.error is not None:
                raise outcome.error
            t_pre, t_head, t_encoded = emulate(
                self.speed, t_start, cpu_start, t_input, outcome.t_done, outcome.t_end
            )
            if outcome.forward is None:
                self._measured(t_start, t_pre, t_encoded)
                self._spend(t_encoded - t_start, 0)
                self._answer_locally(outcome, t_start, future)
                return
            tensor = outcome.forward
        self._measured(t_start, t_pre, t_encoded)
        request = Request(
            id=uuid.uuid4().hex,
            device=self.id,
            model=mv.name,
            version=mv.version,
            cut=plan.cut,
            route=plan.route,
            hop=0,
            tensor=tensor,
            deadline=t_encoded + self.timeouts.base_s() * (1 + JITTER),
            timing=Timing(DeviceTiming(t_start, t_head, t_encoded, t_encoded)),
        )
        flight = Flight(request, future, t_start)
        self.flights.add(flight)
        self._publish(flight)
        self._spend(t_encoded - t_start, len(tensor.data))

    def _measured(self, t_start: float, t_pre: float, t_done: float) -> None:
        """This device's own times per frame: what the planner corrects its profile with."""
        self.timing.latency("preprocess", (t_pre - t_start) * 1000)
        self.timing.latency("head", (t_done - t_pre) * 1000)

    def _answer_locally(self, outcome: Outcome, t_start: float, future: Future) -> None:
        assert outcome.answer is not None
        ms = (time.time() - t_start) * 1000
        self.stats.latency("e2e", ms)
        self.stats.finished()
        self.stats.count("answered_device")
        future.set_result(
            Answer(
                uuid.uuid4().hex,
                outcome.answer.top,
                "device",
                outcome.answer.output,
                (HopLatency("device", self.id, None, None, ms, 0.0, None),),
                0,
                ms,
                1,
            )
        )

    def _publish(self, flight: Flight) -> None:
        assert self.client is not None
        request = flight.request
        hop = request.route[0]
        payload = pack_request(request)
        flight.sizes.append(len(payload))
        self.metrics.uplink.inc(len(payload))
        topic = self.topics.request(hop.tier, request.model, request.cut, self.id)
        client = self.client

        def nobody(code: int, why: str) -> None:  # PUBACK, on the network thread
            if code == NO_SUBSCRIBERS and client.reconnected_within(RESUBSCRIBE_GRACE_S):
                log.info("no %s worker subscribed yet after a reconnect; will resend", hop.tier)
            elif code == NO_SUBSCRIBERS:
                message = f"no {hop.tier} worker is subscribed ({why})"
                self._finish(request.id, error=InferenceFailed(request.id, "no_worker", message))
                self.plans.unreachable(hop.tier)
            elif code == NOT_AUTHORIZED:  # this device's user may not write there: no retry
                message = f"the broker's ACL refuses {self.id} on {topic} ({why})"
                error = InferenceFailed(request.id, "not_authorized", message)
                self._finish(request.id, error=error)

        def send() -> None:
            try:
                client.publish(
                    topic,
                    payload,
                    qos=1,
                    correlation_data=request.id.encode(),
                    response_topic=self.topics.result(self.id),
                    content_type=CONTENT_TYPE_REQUEST,
                    expiry_s=expiry_interval(request.deadline, time.time()),
                    on_ack=nobody,
                )
            except SplitMQError as exc:
                self._finish(request.id, error=InferenceFailed(request.id, "not_sent", str(exc)))

        if self._uplink:
            self._uplink.send(len(payload), send)
        else:
            send()

    def _resend(self, flight: Flight) -> None:
        self.stats.count("retries")
        log.info("request %s timed out; sending it again", flight.request.id)
        self._publish(flight)

    def _expire(self, flight: Flight) -> None:
        self.stats.fail("timeout")
        self._failed.append(flight.request.id)
        tier = flight.request.route[0].tier
        flight.future.set_exception(
            InferenceFailed(
                flight.request.id, "timeout", f"no answer after {flight.attempts} attempt(s)"
            )
        )
        self.plans.timed_out(tier)

    # --- answers ----------------------------------------------------------------------

    def _on_result(self, msg: Message) -> None:
        def deliver() -> None:
            try:
                result = unpack_result(msg.payload, self.settings.max_payload_bytes)
            except WireError as exc:
                log.warning("unreadable result on %s: %s", msg.topic, exc)
                self.stats.count("bad_result")
                return
            self.estimates.downlink(time.time() - result.t_sent)
            self._finish(result.id, result=result)

        if self._downlink:
            self._downlink.send(len(msg.payload), deliver)
        else:
            deliver()

    def _on_error(self, msg: Message) -> None:
        try:
            report = unpack_error(msg.payload, self.settings.max_payload_bytes)
        except WireError as exc:
            log.warning("unreadable error on %s: %s", msg.topic, exc)
            return
        if report.id is None:
            log.warning("worker error without request id: %s: %s", report.code, report.message)
            self.stats.fail(report.code)
            return
        if report.code == "expired" and self.flights.can_retry(report.id):
            # an attempt that waited out its deadline in a queue (a broker outage): the
            # attempt's timeout sends it again; only the last attempt's expiry fails it
            self.stats.count("expired_attempts")
            return
        self._finish(report.id, error=InferenceFailed(report.id, report.code, report.message))

    def _finish(
        self, request_id: str, result: Result | None = None, error: InferenceFailed | None = None
    ) -> None:
        flight = self.flights.pop(request_id)
        if flight is None:
            if request_id in self._failed and result is not None:
                self.stats.count("answered_after_failure")
                log.warning("%s: an answer to request %s came after it failed", self.id, request_id)
            else:
                self.stats.count("duplicate_answers")  # a replay after a retry, or a redelivery
            return
        if error is not None or result is None:
            self.stats.fail(error.code if error else "internal")
            self._failed.append(request_id)
            flight.future.set_exception(error or InferenceFailed(request_id, "internal", "?"))
            return
        e2e = (time.time() - flight.t0) * 1000
        if flight.attempts == 1:
            self.timeouts.answered(e2e / 1000)
        self._spend_waiting(e2e / 1000, flight)
        first = result.latency[1] if len(result.latency) > 1 else None
        self.plans.fallback.answered(flight.request.route[0].tier)
        if first is not None and first.transfer_ms is not None and flight.attempts == 1:
            sent = flight.request.timing.device.t_sent
            self.estimates.transfer(sent, sent + first.transfer_ms / 1000, flight.sizes[-1])
            self._report_link()
        self.stats.latency("e2e", e2e)
        self.stats.finished()
        self.stats.count(f"answered_{result.tier}")
        flight.future.set_result(
            Answer(
                result.id,
                result.top,
                result.tier,
                result.exit,
                result.latency,
                sum(flight.sizes),
                round(e2e, 3),
                flight.attempts,
            )
        )

    # --- energy and telemetry -----------------------------------------------------------

    def _spend(self, compute_s: float, nbytes: int) -> None:
        if self.battery is not None:
            link = self.link.at(time.monotonic() - self._started) if self.link else None
            radio_s = nbytes * 8 / (link.bits_per_s if link else 100e6)
            self.battery.spend(compute_s, radio_s)

    def _spend_waiting(self, e2e_s: float, flight: Flight) -> None:
        """The idle draw while the answer was on its way (docs/planner.md, energy)."""
        if self.battery is not None:
            sent = flight.request.timing.device
            self.battery.spend(0.0, 0.0, max(0.0, e2e_s - (sent.t_sent - sent.t_start)))

    def _oldest(self) -> tuple[int, float] | None:
        flight = self.flights.oldest()
        if flight is None or not flight.sizes:
            return None
        return flight.sizes[-1], time.time() - flight.request.timing.device.t_sent

    def _report_link(self) -> None:
        """Publish telemetry early when the link estimate moved (the planner acts on it)."""
        now = (self.estimates.uplink_bps(), self.estimates.rtt_ms())
        soon = time.monotonic() - self._reported_at < REPORT_EVERY_S
        if self.telemetry and not soon and link_moved(self._reported, now):
            self._reported, self._reported_at = now, time.monotonic()
            self.telemetry.publish()


def _overloaded(future: Future) -> bool:
    exc = future.exception() if not future.cancelled() else None
    return isinstance(exc, InferenceFailed) and exc.code in OVERLOAD
