"""The worker both tiers run: requests in over MQTT, the hop executor, answers out.

Workers share their tier's request topics through a shared subscription. paho's thread
only queues each message; a bounded pool of threads (ONNX Runtime releases the GIL) takes
one request or a dynamic batch (``shared.runtime.batching``). Manual acks and a Receive
Maximum equal to the pool's capacity make a busy worker push back on the broker, never
drop. Each request is source-routed: the hop runs through ``HopExecutor``, then the worker
answers (an exit head confident, or the output reached) or forwards the tensor at the hop's
``to``; a bad request gets a JSON error on ``error/<device>``. A role adds its own ways in
as ``ingress`` (the edge: camera frames), an emulation its own executor (``lab.speed``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from splitmq.shared.errors import PayloadTooLarge, RequestFailed, SplitMQError, WireError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.announce import parse_announcement
from splitmq.shared.protocol.ids import Tier
from splitmq.shared.protocol.results import ErrorReport, Result, pack_error
from splitmq.shared.protocol.telemetry import WorkerTelemetry
from splitmq.shared.protocol.topics import ANY, Topics
from splitmq.shared.protocol.wire import (
    HopTiming,
    Request,
    expiry_interval,
)
from splitmq.shared.runtime.answers import answer_to
from splitmq.shared.runtime.batching import Batches, default_max_batch
from splitmq.shared.runtime.dedupe import Replays, Reply
from splitmq.shared.runtime.executor import ExecutorFactory, HopExecutor, Outcome
from splitmq.shared.runtime.ingress import Ingress
from splitmq.shared.runtime.metrics import WorkerMetrics
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats, worker_telemetry
from splitmq.shared.runtime.taken import Taken, job_for, read_request, reply_to
from splitmq.shared.runtime.wan import WanProbe, answer_pings, ping_filters
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import NO_SUBSCRIBERS, Message, MqttClient
from splitmq.shared.transport.telemetry import TelemetryPublisher

log = logging.getLogger(__name__)

# Workers connect with clean sessions on purpose: mosquitto 2.0 keeps dealing a shared
# subscription's messages to a member whose durable session outlives it (test_dataplane:
# 3 of 30 requests waited so). What a dead worker held its devices send again.
#: A worker's MQTT keepalive: the broker drops a hung worker after 1.5x this, so the
#: shared subscription stops dealing it requests and the devices' retries reach a live
#: one. Measured: idle workers do not flap on a loaded host (benchmarks.md, Faults).
KEEPALIVE_S = 2


class Worker:
    """An edge or cloud worker (see module docstring)."""

    def __init__(
        self,
        settings: Settings,
        tier: Tier,
        worker_id: str | None = None,
        threads: int = 2,
        queue_size: int = 8,
        telemetry_period_s: float = 5.0,
        on_result: Callable[[Result], None] | None = None,
        *,
        executor: ExecutorFactory = HopExecutor,
        ingress: Sequence[Ingress] = (),
    ) -> None:
        self.settings = settings
        self.tier: Tier = tier
        self.id = worker_id or f"{tier}-{uuid.uuid4().hex[:8]}"
        self.topics = settings.topics
        self.sessions = SessionCache(ModelPool(settings.pool), settings.threads, settings.providers)
        self.executor = executor(self.sessions, settings.max_payload_bytes)
        # Service time per segment: (model, version, from cut, to cut or None).
        # Recent runs only: a worker slowed by other load shows within a few periods.
        self.stats: Stats[tuple[str, int, int, int | None]] = Stats(window=64)
        self.replays = Replays()
        self.threads = threads
        self.max_batch = settings.max_batch or default_max_batch(self.sessions.provider)
        # a full batch for each thread, and the queue beyond it
        self.capacity = threads * self.max_batch + queue_size
        self.ingress = list(ingress)
        # Requests are at most the Receive Maximum, what each ingress takes (e.g. QoS 0
        # frames, which no Receive Maximum holds back) at most as many: a put never waits.
        self._queue: queue.Queue[tuple[Message, float, Ingress | None] | None] = queue.Queue(
            (1 + len(self.ingress)) * self.capacity
        )
        self._in_flight = 0
        self._lock = threading.Lock()
        self.client = MqttClient(
            settings.connection(self.id, keepalive=KEEPALIVE_S),
            will=TelemetryPublisher.will(self.topics, tier, self.id),
            receive_maximum=self.capacity,
            manual_ack=True,
        )
        self.telemetry = TelemetryPublisher(
            self.client, self.topics, tier, self.id, self._telemetry, telemetry_period_s
        )
        self.metrics = WorkerMetrics(tier, self._telemetry, self.stats)
        self._pool: list[threading.Thread] = []
        self.on_result = on_result
        # at a site, an edge measures its WAN to the cloud tier (shared.runtime.wan)
        at_site = tier == "edge" and settings.site is not None
        self.wan = WanProbe(self.client, self.topics, self.id) if at_site else None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Worker:
        self.client.connect()
        for i in range(self.threads):
            t = threading.Thread(target=self._serve, name=f"{self.id}-{i}", daemon=True)
            t.start()
            self._pool.append(t)
        for filt in self.request_filters:
            self.client.subscribe(filt, self.submit, qos=1)
        for ingress in self.ingress:
            ingress.start(self)
        self.client.subscribe(self.topics.models_filter(), self._on_model, qos=1)
        if self.tier == "cloud":
            answer_pings(self.client, self.topics)
        if self.wan is not None:
            self.wan.start()
        self.telemetry.start()
        log.info("%s serving %s", self.id, " and ".join(self.request_filters))
        return self

    def stop(self) -> None:
        """Stop taking requests, finish the queued ones, say offline, disconnect."""
        for filt in self.request_filters + (
            ping_filters(self.topics) if self.tier == "cloud" else []
        ):
            self.client.unsubscribe(filt)
        for ingress in self.ingress:
            ingress.stop()
        for _ in self._pool:
            self._queue.put(None)
        for t in self._pool:
            t.join(timeout=30)
        if self.wan is not None:
            self.wan.stop()
        self.telemetry.stop()
        self.client.close()

    @property
    def request_filters(self) -> list[str]:
        """Its tier's requests; the cloud's also from every site's tree (``Topics.scoped``)."""
        sites = [self.topics.filters().at_site(ANY)] if self.tier == "cloud" else []
        return [t.shared_requests(self.tier) for t in (self.topics, *sites)]

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- network thread: parse nothing heavy, just queue ---------------------------------

    def submit(self, msg: Message, ingress: Ingress | None = None) -> None:
        """Queue ``msg``, a request or what ``ingress`` took (``shared.runtime.ingress``).
        A retained request is not run: the broker replays it to each worker subscribing,
        long after its live copy was served (a retained frame neither: ``edge.frames``)."""
        if msg.retain and ingress is None:
            self.stats.count("retained_requests")
            log.warning("%s: a retained request on %s: not run", self.id, msg.topic)
            msg.ack()
            return
        self.metrics.received.inc(len(msg.payload))
        self._queue.put((msg, time.time(), ingress))  # never waits: see the queue's size

    def _on_model(self, msg: Message) -> None:
        """A model version was added or re-calibrated: read its manifests again on next use
        (requests naming an older version are still served: their segments stay)."""
        try:
            news = parse_announcement(self.topics, msg.topic, msg.payload)
        except WireError as exc:
            self.stats.count("bad_announcements")
            log.warning("%s: ignoring a model announcement: %s", self.id, exc)
            return
        if news is not None:
            log.info("%s: %s v%d announced", self.id, news.name, news.version)
            self.sessions.forget(news.name)

    # --- worker threads --------------------------------------------------------------------

    def _serve(self) -> None:
        batches = Batches(self._queue, self.max_batch, self.settings.max_queue_delay_s)
        stop = False
        while not stop:
            items, stop = batches.take()
            with self._lock:
                self._in_flight += len(items)
            try:
                self._handle(items)
            except Exception:  # a bug: logged, and this thread keeps serving
                log.exception("%s: a batch of %d failed", self.id, len(items))
            finally:
                for msg, _, ingress in items:
                    msg.ack()
                    if ingress is not None:
                        ingress.finished()
                with self._lock:
                    self._in_flight -= len(items)

    def _handle(self, items: list[tuple[Message, float, Ingress | None]]) -> None:
        """Read and claim each request, run their hops together (``HopExecutor.execute``
        batches those of one segment), then answer or forward each on its own."""
        taken = [t for t in (self._take(*item) for item in items) if t is not None]
        if not taken:
            return
        self.metrics.batch.observe(len(taken))
        try:
            outcomes = self.executor.execute([t.job for t in taken])
            if len(outcomes) != len(taken):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(taken)} jobs")
        except Exception as exc:  # an executor must not raise: each request still hears
            for one in taken:
                self._report(exc, one.msg, one.device, one.request.id, one.key, one.topics)
            return
        for one, outcome in zip(taken, outcomes, strict=True):
            try:
                reply = self._reply(self._hop_done(one, outcome), one.msg, one.topics)
                self._send(reply, one.request, one.topics)
                self.replays.done(one.key, reply)
                self.stats.finished()
            except Exception as exc:
                self._report(exc, one.msg, one.device, one.request.id, one.key, one.topics)

    def _take(self, msg: Message, t_recv: float, ingress: Ingress | None) -> Taken | None:
        """The request ``msg`` carries, read, checked and claimed for its hop; None when it
        was served before (its reply replayed) or failed (the device told)."""
        try:  # a site's request (on the cloud broker) is answered in the site's tree
            topics = self.topics if ingress is not None else self.topics.scoped(msg.topic)
        except WireError as exc:  # only a topic outside every ACL: nobody to tell
            self.stats.fail("bad_route")
            log.warning("%s: %s", self.id, exc)
            return None
        device, request_id, key = topics.device_of_request(msg.topic), None, None
        try:
            request_id = msg.correlation_id()
            if ingress is not None:
                device = ingress.device(msg)
                request = ingress.request(msg, t_recv)
            else:
                device, request = read_request(msg, topics, self.settings.max_payload_bytes)
            request_id = request.id
            key = (topics.result(device), request.id, request.hop)  # unique across sites
            earlier = self.replays.claim(key)
            if earlier is not None:
                self._again(request, earlier, topics)
                return None
            if request.expired(time.time()):
                raise RequestFailed("expired", f"request {request.id} expired before it ran")
            return Taken(msg, t_recv, topics, device, request, key, job_for(request, self.tier))
        except Exception as exc:
            self._report(exc, msg, device, request_id, key, topics)
            return None

    def _report(
        self,
        exc: Exception,
        msg: Message,
        device: str | None,
        request_id: str | None,
        key: tuple[str, str, int] | None,
        topics: Topics,
    ) -> None:
        """Tell the device its request failed: its error, or a bug's as ``internal``."""
        code, why = getattr(exc, "code", "internal"), str(exc)
        if not isinstance(exc, SplitMQError):  # a bug or a runtime failure: still answered
            log.exception("unexpected failure on %s", msg.topic, exc_info=exc)
            why = f"{exc.__class__.__name__}: {exc}"
        try:
            self.fail(device, request_id, code, why, key, topics)
        except Exception:  # even reporting failed (e.g. disconnected): keep serving
            log.exception("cannot report a failure on %s", msg.topic)

    def _again(self, request: Request, earlier: Reply | str, topics: Topics) -> None:
        """A request seen before: its reply once more, or nothing while it is being served."""
        self.stats.count("duplicates")
        if isinstance(earlier, Reply):
            self.stats.count("replayed")
            log.info("request %s (hop %d) again: replaying its reply", request.id, request.hop)
            self._send(earlier, request, topics)
        else:
            log.info("request %s (hop %d) again while it runs", request.id, request.hop)

    def _hop_done(self, taken: Taken, outcome: Outcome) -> Result | Request:
        """What the hop made of ``taken``: the answer, or the request for the next hop."""
        if outcome.error is not None:
            raise outcome.error
        request, hop, mv = taken.request, taken.request.current, outcome.mv
        assert mv is not None
        # its share of a batch's run: what the planner reads as the tier's service time
        self.stats.latency((mv.name, mv.version, request.cut, hop.to), outcome.service_ms)
        self.metrics.ran(request.cut, hop.to, outcome, taken.t_recv)
        record = HopTiming(
            self.tier,
            self.id,
            taken.t_recv,
            outcome.t_start,
            outcome.t_done,
            outcome.t_end,
            len(taken.msg.payload),
        )
        if outcome.forward is not None:
            assert hop.to is not None  # the executor forwards only from a hop that stops early
            return request.forwarded(hop.to, outcome.forward, record)
        assert outcome.answer is not None
        timing = request.timing.appended(record)
        return answer_to(request, timing, self.tier, mv.name, mv.version, outcome.answer)

    # --- pieces --------------------------------------------------------------------------

    def _reply(self, made: Result | Request, msg: Message, topics: Topics) -> Reply:
        """The message that ends this hop (``reply_to``), counted; an answer recorded."""
        if isinstance(made, Result):
            self.stats.count(f"answered_{self.tier}")
            if self.on_result:
                self.on_result(made)
        else:
            self.stats.count(f"forwarded_{made.current.tier}")
        return reply_to(made, msg, topics)

    def _send(self, reply: Reply, request: Request, topics: Topics) -> None:
        """Publish ``reply`` (QoS 1); a forward nobody is subscribed to fails the request."""
        options = dict(reply.options)
        if reply.deadline is not None:  # a forward: it expires when the request does
            options["expiry_s"] = expiry_interval(reply.deadline, time.time())
            options["on_ack"] = lambda code, why: self._acked(code, request, topics)
        try:
            self.client.publish(reply.topic, reply.payload, qos=1, **options)
            self.metrics.sent.inc(len(reply.payload))
        except PayloadTooLarge as exc:
            raise RequestFailed("bad_route", f"cannot forward: {exc}") from exc

    def _acked(self, code: int, request: Request, topics: Topics) -> None:
        """The broker's PUBACK of a forward. Reason 16: the next tier has no worker
        subscribed: say so now, not after a timeout (network thread: it only publishes)."""
        if code != NO_SUBSCRIBERS:
            return
        nxt = request.route[request.hop + 1].tier if request.hop + 1 < len(request.route) else "?"
        self.stats.count("no_worker")
        self.fail(
            request.device,
            request.id,
            "no_worker",
            f"no {nxt} worker is subscribed: request {request.id} has nowhere to go",
            topics=topics,
        )

    def fail(
        self,
        device: str | None,
        request_id: str | None,
        code: str,
        message: str,
        key: tuple[str, str, int] | None = None,
        topics: Topics | None = None,
    ) -> None:
        """Count a failure and tell ``device`` on ``error/<device>`` (an ingress's too);
        with ``key``, a retry of the request gets the same error again."""
        self.stats.fail(code)
        log.warning("request %s from %s: %s: %s", request_id, device, code, message)
        if device is None:
            return  # no device to tell: the topic itself was unusable
        report = ErrorReport(request_id, device, code, message[:1000])
        reply = Reply(
            (topics or self.topics).error(device),
            pack_error(report),
            {"correlation_data": request_id.encode() if request_id else None, "json": True},
        )
        self.client.publish(reply.topic, reply.payload, qos=1, **reply.options)
        self.metrics.sent.inc(len(reply.payload))
        if key is not None:
            self.replays.done(key, reply)

    def _telemetry(self, ts: float) -> WorkerTelemetry:
        with self._lock:
            in_flight, queued = self._in_flight, self._queue.qsize()
        wan = None if self.wan is None else self.wan.estimate()
        return worker_telemetry(
            self.tier,
            self.id,
            ts,
            self.stats,
            self.sessions.loaded(),
            wan,
            in_flight=in_flight,
            queued=queued,
            threads=self.threads,
            provider=self.sessions.provider,
        )
