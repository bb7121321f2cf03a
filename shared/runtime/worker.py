"""The hop executor that edge and cloud workers share.

A worker subscribes to its tier's request topics through a shared
subscription, so any number of workers split the load. paho's network thread
only parses the topic and queues the message; a bounded pool of threads runs
inference (ONNX Runtime releases the GIL). Manual acks with a Receive
Maximum equal to the pool's capacity make the broker hold back messages
instead of queueing them here, so a busy worker applies backpressure and
never drops silently.

Each request is source-routed: the worker runs its hop (the current cut to
the hop's ``to``), answers when an exit head is confident or the model's
output is reached, and otherwise forwards the tensor at ``to`` to the next
tier. Any bad request gets a JSON error on ``error/<device>``; the worker
keeps serving.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from splitmq.shared.codecs import decode, encode, parse_codec
from splitmq.shared.errors import (
    CodecError,
    ModelError,
    PayloadTooLarge,
    PoolError,
    SplitMQError,
    WireError,
)
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import normalize
from splitmq.shared.offline.calibration import codec_params
from splitmq.shared.offline.exits import softmax
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.protocol.wire import (
    CONTENT_TYPE_REQUEST,
    ERROR_CODES,
    ErrorReport,
    HopTiming,
    Request,
    Result,
    TopK,
    expiry_interval,
    latency_breakdown,
    pack_error,
    pack_request,
    pack_result,
    unpack_request,
)
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import Message, MqttClient
from splitmq.shared.transport.telemetry import Telemetry

log = logging.getLogger(__name__)

TOP_K = 5
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # request ids, as the wire format allows
INPUT_CODECS = ("u8", "jpeg")


class RequestFailed(SplitMQError):
    """A request this worker cannot serve; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SeenIds:
    """Request ids seen recently (QoS 1 redelivery, device retries): answer once."""

    def __init__(self, ttl_s: float = 120.0, size: int = 100_000) -> None:
        self.ttl_s, self.size = ttl_s, size
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) > self.size or next(iter(self._seen.values())) < now - self.ttl_s
            ):
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now
            return True


@dataclass(frozen=True)
class Outcome:
    """What a hop produced: an answer, or a tensor for the next hop."""

    result: Result | None = None
    forward: Request | None = None


class Worker:
    """An edge or cloud worker (see module docstring)."""

    def __init__(
        self,
        settings: Settings,
        tier: str,
        worker_id: str | None = None,
        threads: int = 2,
        queue_size: int = 8,
        telemetry_period_s: float = 5.0,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.settings = settings
        self.tier = tier
        self.id = worker_id or f"{tier}-{uuid.uuid4().hex[:8]}"
        self.topics = Topics.from_settings(settings)
        self.sessions = SessionCache(ModelPool(settings.pool), settings.threads)
        self.stats = Stats()
        self.seen = SeenIds()
        self.threads = threads
        self._queue: queue.Queue[tuple[Message, float] | None] = queue.Queue(threads + queue_size)
        self._in_flight = 0
        self._lock = threading.Lock()
        self.client = MqttClient(
            settings,
            self.id,
            will=Telemetry.will(self.topics, tier, self.id),
            receive_maximum=threads + queue_size,
            manual_ack=True,
        )
        self.telemetry = Telemetry(
            self.client, self.topics, tier, self.id, self._telemetry, telemetry_period_s
        )
        self._pool: list[threading.Thread] = []
        self.on_result = on_result
        self.on_stop: list[Callable[[], None]] = []

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Worker:
        self.client.connect()
        for i in range(self.threads):
            t = threading.Thread(target=self._serve, name=f"{self.id}-{i}", daemon=True)
            t.start()
            self._pool.append(t)
        self.client.subscribe(self.topics.shared_requests(self.tier), self._enqueue, qos=1)
        self.telemetry.start()
        log.info("%s serving %s", self.id, self.topics.shared_requests(self.tier))
        return self

    def stop(self) -> None:
        """Stop taking requests, finish the queued ones, say offline, disconnect."""
        self.client.unsubscribe(self.topics.shared_requests(self.tier))
        for _ in self._pool:
            self._queue.put(None)
        for t in self._pool:
            t.join(timeout=30)
        self.telemetry.stop()
        self.client.close()
        for action in self.on_stop:
            action()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- network thread: parse nothing heavy, just queue ---------------------------------

    def _enqueue(self, msg: Message) -> None:
        self._queue.put((msg, time.time()))  # never blocks: capacity >= Receive Maximum

    # --- worker threads --------------------------------------------------------------------

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            msg, t_recv = item
            with self._lock:
                self._in_flight += 1
            try:
                self._handle(msg, t_recv)
            except Exception:  # even reporting failed (e.g. disconnected): keep serving
                log.exception("cannot report a failure on %s", msg.topic)
            finally:
                msg.ack()
                with self._lock:
                    self._in_flight -= 1

    def _handle(self, msg: Message, t_recv: float) -> None:
        device, request_id = None, None
        try:
            route = self.topics.parse_request(msg.topic)
            device = route.device
            request_id = _correlation_id(msg)
            request = unpack_request(msg.payload, self.settings.max_payload_bytes)
            request_id = request.id
            if (request.model, request.cut, request.device) != (route.model, route.cut, device):
                raise RequestFailed(
                    "bad_route",
                    f"topic {msg.topic} does not match the request "
                    f"({request.model}, cut {request.cut}, {request.device})",
                )
            if not self.seen.first_time(f"{request.id}/{request.hop}"):
                self.stats.count("duplicates")
                log.info("duplicate request %s (hop %d) ignored", request.id, request.hop)
                return
            if request.expired(time.time()):
                raise RequestFailed("expired", f"request {request.id} expired before it ran")
            outcome = self.run_hop(request, t_recv, len(msg.payload))
            self._publish(request, outcome, msg)
            self.stats.finished()
        except RequestFailed as exc:
            self._fail(device, request_id, exc.code, str(exc))
        except WireError as exc:
            self._fail(device, request_id, "bad_payload", str(exc))
        except CodecError as exc:
            self._fail(device, request_id, "bad_tensor", str(exc))
        except SplitMQError as exc:
            self._fail(device, request_id, _code_of(exc), str(exc))
        except Exception as exc:  # a bug or a runtime failure: the device must still hear
            log.exception("unexpected failure on %s", msg.topic)
            self._fail(device, request_id, "internal", f"{exc.__class__.__name__}: {exc}")

    def run_hop(self, request: Request, t_recv: float, nbytes: int) -> Outcome:
        """Run this tier's part of ``request``; the core, without any MQTT."""
        hop = request.current
        if hop.tier != self.tier:
            raise RequestFailed(
                "bad_route", f"hop {request.hop} is for {hop.tier}, this is {self.tier}"
            )
        mv = self._model(request)
        end = mv.last_cut if hop.to is None else hop.to
        if not request.cut < end <= mv.last_cut:
            raise RequestFailed(
                "unknown_cut",
                f"{mv.name} v{mv.version} has cuts 0..{mv.last_cut};"
                f" cannot run {request.cut} -> {end}",
            )
        t_start = time.time()
        x = self._input(mv, request)
        seg = self.sessions.segment(mv, request.cut, end)
        outputs = seg.run(x)
        t_done = time.time()
        self.stats.latency((mv.name, mv.version, request.cut, hop.to), (t_done - t_start) * 1000)
        answer = self._answer(mv, outputs, hop.exit if hop.to is not None else None)
        if answer is None and hop.to is None:
            raise RequestFailed("internal", "the last hop produced no model output")
        if answer is not None:
            name, logits = answer
            record = HopTiming(self.tier, self.id, t_recv, t_start, t_done, time.time(), nbytes)
            timing = request.timing.appended(record)
            return Outcome(
                result=Result(
                    id=request.id,
                    device=request.device,
                    model=mv.name,
                    version=mv.version,
                    top=_top_k(logits, mv.labels),
                    tier=self.tier,
                    exit=name,
                    latency=latency_breakdown(request.device, timing),
                    bytes=sum(r.bytes for r in timing.hops),
                    t_sent=record.t_sent,
                )
            )
        codec = hop.codec or request.tensor.codec
        tensor = encode(outputs[mv.cuts[end].name], codec, codec_params(mv, end, codec))
        record = HopTiming(self.tier, self.id, t_recv, t_start, t_done, time.time(), nbytes)
        return Outcome(forward=request.forwarded(end, tensor, record))

    # --- pieces --------------------------------------------------------------------------

    def _model(self, request: Request) -> ModelVersion:
        try:
            return self.sessions.model(request.model, request.version)
        except SplitMQError as exc:
            raise RequestFailed("unknown_model", str(exc)) from exc

    def _input(self, mv: ModelVersion, request: Request) -> np.ndarray:
        """Decode the tensor and check it fits the partition (normalising input codecs)."""
        cut = mv.cuts[request.cut]
        x = decode(request.tensor, self.settings.max_payload_bytes)
        if parse_codec(request.tensor.codec).base in INPUT_CODECS:
            pre = mv.manifest.preprocess
            if request.cut != 0 or pre is None:
                raise RequestFailed(
                    "bad_tensor",
                    f"codec {request.tensor.codec} is for the input "
                    "(cut 0) of a model with image preprocessing",
                )
            x = normalize(x, pre)
        if list(x.shape[1:]) != cut.shape[1:] or str(x.dtype) != cut.dtype or x.shape[0] < 1:
            raise RequestFailed(
                "bad_tensor",
                f"cut {cut.index} of {mv.name} takes "
                f"[N, {', '.join(map(str, cut.shape[1:]))}] {cut.dtype}, got "
                f"{list(x.shape)} {x.dtype}",
            )
        return x

    @staticmethod
    def _answer(
        mv: ModelVersion, outputs: dict[str, np.ndarray], threshold: float | None
    ) -> tuple[str, np.ndarray] | None:
        """The output to answer with: a confident exit head, or the final output."""
        final = mv.output_names[-1]
        if final in outputs:
            return final, outputs[final][0]
        if threshold is None:
            return None
        for name in mv.output_names[:-1]:
            if name in outputs and softmax(outputs[name][0]).max() >= threshold:
                return name, outputs[name][0]
        return None

    def _publish(self, request: Request, outcome: Outcome, msg: Message) -> None:
        now = time.time()
        corr = request.id.encode()
        if outcome.result is not None:
            # Never msg.response_topic: replies go only where the ACL-checked device id says.
            topic = self.topics.result(request.device)
            self.client.publish(
                topic,
                pack_result(outcome.result),
                qos=1,
                correlation_data=corr,
                content_type="application/json",
                json=True,
            )
            self.stats.count(f"answered_{self.tier}")
            if self.on_result:
                self.on_result(outcome.result)
            return
        fwd = outcome.forward
        assert fwd is not None
        nxt = fwd.current
        try:
            self.client.publish(
                self.topics.request(nxt.tier, fwd.model, fwd.cut, fwd.device),
                pack_request(fwd),
                qos=1,
                correlation_data=corr,
                response_topic=msg.response_topic,
                content_type=CONTENT_TYPE_REQUEST,
                expiry_s=expiry_interval(fwd.deadline, now),
            )
        except PayloadTooLarge as exc:
            raise RequestFailed("bad_route", f"cannot forward to {nxt.tier}: {exc}") from exc
        self.stats.count(f"forwarded_{nxt.tier}")

    def _fail(self, device: str | None, request_id: str | None, code: str, message: str) -> None:
        self.stats.count(code)
        log.warning("request %s from %s: %s: %s", request_id, device, code, message)
        if device is None:
            return  # no device to tell: the topic itself was unusable
        report = ErrorReport(request_id, device, code, message[:1000])
        self.client.publish(
            self.topics.error(device),
            pack_error(report),
            qos=1,
            correlation_data=request_id.encode() if request_id else None,
            content_type="application/json",
            json=True,
        )

    def _telemetry(self) -> dict:
        """The documented telemetry fields (docs/wire-format.md, Telemetry)."""
        counts = self.stats.snapshot_counts()
        with self._lock:
            in_flight = self._in_flight
        return {
            "models": [{"model": n, "version": v} for n, v in self.sessions.loaded()],
            "queue": self._queue.qsize(),
            "in_flight": in_flight,
            "rps": self.stats.rate(),
            "latency": [
                {"model": m, "version": v, "from": a, "to": b, **summary}
                for (m, v, a, b), summary in self.stats.latencies().items()
            ],
            "errors": {k: n for k, n in counts.items() if k in ERROR_CODES},
            "served": counts.get("served", 0),
            "duplicates": counts.get("duplicates", 0),
            "answered": {t: counts.get(f"answered_{t}", 0) for t in (self.tier,)},
            "forwarded": counts.get("forwarded_cloud", 0),
        }


def _correlation_id(msg: Message) -> str | None:
    """The request id from the MQTT correlation data, if it is a valid id."""
    try:
        cid = (msg.correlation_data or b"").decode()
    except UnicodeDecodeError:
        return None
    return cid if _ID.fullmatch(cid) else None


def _code_of(exc: SplitMQError) -> str:
    if isinstance(exc, PoolError):
        return "unknown_model"
    if isinstance(exc, ModelError):
        return "unknown_cut"
    return "internal"


def _top_k(logits: np.ndarray, labels: list[str] | None, k: int = TOP_K) -> tuple[TopK, ...]:
    probs = softmax(logits.astype(np.float64))
    order = np.argsort(-probs)[:k]
    return tuple(
        TopK(int(i), labels[i] if labels and i < len(labels) else None, round(float(probs[i]), 6))
        for i in order
    )
