"""The device runtime: run the head, compress, publish, and match the answers.

``Device.submit(frame)`` preprocesses a frame, runs the device partition of
the current plan, encodes the tensor at the cut and publishes a source-routed
request (QoS 1, request id as correlation data, an expiry). At most
``window`` requests are in flight (pipelining); results and errors are
matched by id. A request with no answer in ``timeout_s`` is sent once more
(same id: workers answer a duplicate once) and then fails visibly; nothing
simply vanishes. A device-only plan (cut = the output) never touches the
network.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np

from splitmq.device.answers import Answer, InferenceFailed
from splitmq.device.battery import Battery
from splitmq.device.estimates import LinkEstimator
from splitmq.device.link import DelayLine, LinkSpec
from splitmq.shared.codecs import encode, parse_codec
from splitmq.shared.errors import SplitMQError, UserError, WireError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.results import HopLatency, unpack_error, unpack_result
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    LatencySummary,
    Link,
    ModelRef,
    Wants,
)
from splitmq.shared.protocol.wire import (
    CONTENT_TYPE_REQUEST,
    DeviceTiming,
    Request,
    Timing,
    expiry_interval,
    pack_request,
)
from splitmq.shared.runtime.executor import HopExecutor, Job, Outcome
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import Message, MqttClient
from splitmq.shared.transport.telemetry import TelemetryPublisher

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    request: Request
    future: Future
    t0: float
    attempts: int = 1
    deadline: float = 0.0
    sizes: list[int] = field(default_factory=list)


class Device:
    """One device (see module docstring). Use as a context manager."""

    def __init__(
        self,
        settings: Settings,
        device_id: str,
        plan: Plan,
        *,
        link: LinkSpec | None = None,
        speed: float = 1.0,
        window: int = 4,
        timeout_s: float = 10.0,
        retries: int = 1,
        battery: float | None = 1.0,
        wants: Wants | None = None,
        telemetry_period_s: float = 5.0,
    ) -> None:
        if not 0 < speed <= 1:
            raise UserError(f"speed must be in (0, 1] (1 = this host), got {speed}")
        self.settings, self.id = settings, device_id
        self.topics = settings.topics
        self.sessions = SessionCache(ModelPool(settings.pool), settings.threads)
        self.executor = HopExecutor(self.sessions, settings.max_payload_bytes)
        self.plan = plan
        self.mv = self.sessions.model(plan.model, plan.version)
        self.mv.check_cut(plan.cut)
        self.link, self.speed = link, speed
        self.timeout_s, self.retries = timeout_s, retries
        self.stats: Stats[str] = Stats()
        self.estimates = LinkEstimator()
        self.battery = None if battery is None else Battery(battery, speed)
        self.wants = wants or Wants()
        self._window = threading.BoundedSemaphore(window)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._uplink: DelayLine | None = None
        self._downlink: DelayLine | None = None
        self.client: MqttClient | None = None
        self.telemetry: TelemetryPublisher | None = None
        self._reaper = threading.Thread(
            target=self._reap, name=f"{device_id}-timeouts", daemon=True
        )
        self._period = telemetry_period_s

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Device:
        if self.plan.cut > 0:
            self.sessions.segment(self.mv, 0, self.plan.cut)  # load and warm the head now
        if self.link:
            one_way = self.link.rtt_ms / 2000
            self._uplink = DelayLine(self.link.bits_per_s, one_way, f"{self.id}-uplink")
            self._downlink = DelayLine(self.link.bits_per_s, one_way, f"{self.id}-downlink")
        self.client = MqttClient(
            self.settings, self.id, will=TelemetryPublisher.will(self.topics, "device", self.id)
        )
        self.client.connect()
        self.client.subscribe(self.topics.result(self.id), self._on_result, qos=1)
        self.client.subscribe(self.topics.error(self.id), self._on_error, qos=1)
        self.telemetry = TelemetryPublisher(
            self.client, self.topics, "device", self.id, self._telemetry, self._period
        )
        self.telemetry.start()
        self._reaper.start()
        return self

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Wait for (or, with wait=False, fail) what is in flight, then disconnect."""
        limit = time.monotonic() + (timeout if timeout is not None else self.timeout_s * 2.5)
        with self._lock:
            if wait:
                self._lock.wait_for(lambda: not self._pending, max(0, limit - time.monotonic()))
            self._closed = True
            left = list(self._pending.values())
            self._pending.clear()
            self._lock.notify_all()
        for p in left:
            p.future.set_exception(InferenceFailed(p.request.id, "cancelled", "device closed"))
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

    # --- inference -------------------------------------------------------------------

    def infer(self, frame: np.ndarray) -> Answer:
        """Synchronous: the answer for one frame, or InferenceFailed."""
        return self.submit(frame).result(timeout=self.timeout_s * (self.retries + 1) + 5)

    def submit(self, frame: np.ndarray) -> Future:
        """Asynchronous: a Future of the Answer; blocks while the window is full."""
        if self._closed:
            raise UserError("the device is closed")
        self._window.acquire()
        future: Future = Future()
        future.add_done_callback(lambda _: self._window.release())
        try:
            self._send(frame, future)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, SplitMQError):
                raise
        return future

    def _send(self, frame: np.ndarray, future: Future) -> None:
        plan, mv = self.plan, self.mv
        t_start = time.time()
        x = self._model_input(frame)
        if plan.cut == 0:  # nothing to run here: send the input
            t_head = time.time()
            tensor = encode(x, plan.codec, mv.codec_params(0, plan.codec))
            t_encoded = time.time()
        else:
            to = None if plan.device_only else plan.cut
            job = Job(mv.name, mv.version, 0, to, x, forward_codec=plan.codec)
            outcome = self.executor.execute([job])[0]
            if outcome.error is not None:
                raise outcome.error
            slower = self._emulate_speed(outcome.compute_ms / 1000)
            if outcome.forward is None:
                self._answer_locally(outcome, t_start, future)
                return
            tensor = outcome.forward
            t_head, t_encoded = outcome.t_done + slower, outcome.t_end + slower
        request = Request(
            id=uuid.uuid4().hex,
            device=self.id,
            model=mv.name,
            version=mv.version,
            cut=plan.cut,
            route=plan.route,
            hop=0,
            tensor=tensor,
            deadline=t_encoded + self.timeout_s,
            timing=Timing(DeviceTiming(t_start, t_head, t_encoded, t_encoded)),
        )
        pending = _Pending(request, future, t_start, deadline=time.monotonic() + self.timeout_s)
        with self._lock:
            self._pending[request.id] = pending
            self._lock.notify_all()
        self._publish(pending)
        self._spend(t_head - t_start, len(tensor.data))

    def _model_input(self, frame: np.ndarray) -> np.ndarray:
        """Images go through preprocessing; a float array of the input's shape is used as is."""
        pre = self.mv.manifest.preprocess
        spec = self.mv.manifest.input
        if frame.dtype == np.uint8 and pre is not None:
            pixels = to_pixels(frame, pre)
            if self.plan.cut == 0 and parse_codec(self.plan.codec).is_input:
                return pixels  # the receiving tier normalises
            return normalize(pixels, pre)
        shape = tuple(frame.shape) if frame.ndim == len(spec.shape) else (1, *frame.shape)
        if shape[1:] != tuple(spec.shape[1:]) or str(frame.dtype) != spec.dtype:
            raise UserError(
                f"{self.mv.name} takes images or {spec.dtype} arrays of shape "
                f"{spec.shape}, got {frame.dtype} {list(frame.shape)}"
            )
        return frame.reshape(shape)

    def _emulate_speed(self, elapsed_s: float) -> float:
        """A device ``speed`` times as fast as this host takes 1/speed as long: the extra s."""
        extra = elapsed_s * (1 / self.speed - 1)
        if extra > 0:
            time.sleep(extra)
        return extra

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

    def _publish(self, pending: _Pending) -> None:
        assert self.client is not None
        request = pending.request
        hop = request.route[0]
        payload = pack_request(request)
        pending.sizes.append(len(payload))
        topic = self.topics.request(hop.tier, request.model, request.cut, self.id)

        client = self.client

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
                )
            except SplitMQError as exc:
                self._finish(request.id, error=InferenceFailed(request.id, "not_sent", str(exc)))

        if self._uplink:
            self._uplink.send(len(payload), send)
        else:
            send()

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
        self._finish(report.id, error=InferenceFailed(report.id, report.code, report.message))

    def _finish(self, request_id: str, result=None, error: InferenceFailed | None = None) -> None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
            self._lock.notify_all()
        if pending is None:
            self.stats.count("late_or_duplicate")  # already answered, retried or timed out
            return
        if error is not None:
            self.stats.fail(error.code)
            pending.future.set_exception(error)
            return
        e2e = (time.time() - pending.t0) * 1000
        first = result.latency[1] if len(result.latency) > 1 else None
        if first is not None and first.transfer_ms is not None and pending.attempts == 1:
            self.estimates.uplink(pending.sizes[-1], first.transfer_ms / 1000)
        self.stats.latency("e2e", e2e)
        self.stats.finished()
        self.stats.count(f"answered_{result.tier}")
        pending.future.set_result(
            Answer(
                result.id,
                result.top,
                result.tier,
                result.exit,
                result.latency,
                sum(pending.sizes),
                round(e2e, 3),
                pending.attempts,
            )
        )

    # --- timeouts ---------------------------------------------------------------------

    def _reap(self) -> None:
        """Retry a request once when it times out, then fail it."""
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                due = [p for p in self._pending.values() if p.deadline <= now]
                if not due:
                    nxt = min((p.deadline for p in self._pending.values()), default=now + 1)
                    self._lock.wait(max(0.01, nxt - now))
                    continue
                retry: list[_Pending] = []
                fail: list[_Pending] = []
                for p in due:
                    (retry if p.attempts <= self.retries else fail).append(p)
                    if p.attempts > self.retries:
                        del self._pending[p.request.id]
                for p in retry:
                    p.attempts += 1
                    p.deadline = now + self.timeout_s
                    t = time.time()
                    p.request = replace(
                        p.request,
                        deadline=t + self.timeout_s,
                        timing=Timing(replace(p.request.timing.device, t_sent=t)),
                    )
                self._lock.notify_all()
            for p in retry:
                self.stats.count("retries")
                log.info("request %s timed out; sending it again", p.request.id)
                self._publish(p)
            for p in fail:
                self.stats.fail("timeout")
                p.future.set_exception(
                    InferenceFailed(
                        p.request.id, "timeout", f"no answer after {p.attempts} attempt(s)"
                    )
                )

    # --- energy and telemetry -----------------------------------------------------------

    def _spend(self, compute_s: float, nbytes: int) -> None:
        if self.battery is not None:
            radio_s = nbytes * 8 / (self.link.bits_per_s if self.link else 100e6)
            self.battery.spend(compute_s, radio_s)

    def _telemetry(self, ts: float) -> DeviceTelemetry:
        """The documented telemetry (protocol.telemetry.DeviceTelemetry)."""
        e2e = self.stats.latencies().get("e2e")
        with self._lock:
            in_flight = len(self._pending)
        return DeviceTelemetry(
            id=self.id,
            ts=ts,
            rps=self.stats.rate(),
            in_flight=in_flight,
            errors=self.stats.failures(),
            model=ModelRef(model=self.mv.name, version=self.mv.version),
            plan=self.plan.for_device(self.id),
            link=Link(
                uplink_bps=self.estimates.uplink_bps(),
                rtt_ms=self.estimates.rtt_ms(),
                age_s=self.estimates.age_s(),
            ),
            speed=self.speed,
            battery=None if self.battery is None else round(self.battery.level, 4),
            wants=self.wants,
            e2e=None if e2e is None else LatencySummary.model_validate(e2e),
            answered=self.stats.by_prefix("answered_"),
        )
