"""The whole system on one machine, with nothing to configure (`splitmq demo`).

It starts its own mosquitto on a free port (or uses ``--broker``), an edge
and a cloud worker, and a few simulated devices with different links and
speeds; streams real photos through EfficientNet-Lite0 with an early exit,
split device → edge → cloud; and checks every answer against the unsplit
model run locally. One warm-up frame per device (sessions load lazily on
every tier) is not counted.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitmq.device.answers import Answer
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.lab.emulation import Emulated
from splitmq.lab.summary import Summary, outcome
from splitmq.lab.timeline import timeline
from splitmq.planner.service import PlannerService
from splitmq.shared.errors import UserError
from splitmq.shared.model.graph import make_session, run_batched
from splitmq.shared.model.outputs import class_of
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.offline.datasets import photos
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.settings import Settings
from splitmq.shared.units import Link

log = logging.getLogger(__name__)

# Device profiles: (link, speed vs this host), cycled over the devices. Speeds are
# relative, so on any host the first runs the model 20x slower than the edge on a fast
# link (splitting or sending its input wins), the second 8x slower on a middling one,
# and the third, nearly as fast on a slow link, keeps it.
PROFILES = [("100mbit/2ms", 0.05), ("20mbit/10ms", 0.125), ("2mbit/40ms", 0.5)]
DEFAULT_MODEL = "efficientnet-lite0-ee"
DEFAULT_CUT = "/_blocks.4/Add_output_0"  # 40x28x28: 3% of the input's MACs behind it
DEFAULT_CLOUD_CUT = "/_blocks.10/Add_output_0"  # where the exit head reads
DEMO_SEED = 7  # photo crops; the exit head was distilled on seed 1000
DISTINCT_FRAMES = 240  # longer demos cycle through these: memory stays bounded


@dataclass(frozen=True)
class Stop:
    """Ends a demo's stream early (a signal): ``requested`` once ``streaming`` began.
    Before that nothing was sent, so a caller interrupts the demo as it would any code."""

    streaming: threading.Event = field(default_factory=threading.Event)
    requested: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class DemoOptions:
    model: str = DEFAULT_MODEL
    devices: int = 3
    frames: int = 60
    cut: int | None = None
    cloud_cut: int | None = None
    codec: str = "int8"
    exit_threshold: float = 0.5
    broker: str | None = None
    planner: bool = True  # devices follow the planner; False: all run the fixed plan
    secure: bool = False  # TLS, a user per role and device, the ACL (splitmq secure)
    results: str | None = None  # the results store the workers record in; None: none
    dashboard: int | None = None  # serve `splitmq dashboard` on this port while it runs


def _same(settings: Settings) -> Callable[[str], Settings]:
    """Every role logs in alike (an open broker, or one the user pointed to)."""
    return lambda user: settings


def _secure_stack(
    stack: ExitStack, settings: Settings, devices: list[str]
) -> Callable[[str], Settings]:
    """A throwaway ``splitmq secure`` setup and a broker using it: each role its own user."""
    import tempfile

    from splitmq.broker.launcher import Broker
    from splitmq.broker.secure import SecureDir

    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitmq-secure-")))
    SecureDir.init(root / "secure", devices=devices, prefix=settings.topic_prefix)
    broker = stack.enter_context(Broker(secure=root / "secure"))
    keep = {"pool": settings.pool, "threads": settings.threads}
    return lambda user: broker.user_settings(user, **keep)


def cut_index(mv: ModelVersion, name: str, fallback: int) -> int:
    return next((c.index for c in mv.cuts if c.name == name), fallback)


def demo_plan(mv: ModelVersion, opts: DemoOptions) -> Plan:
    cut = opts.cut if opts.cut is not None else cut_index(mv, DEFAULT_CUT, mv.last_cut // 3)
    cloud_cut = opts.cloud_cut
    if cloud_cut is None and len(mv.output_names) > 1:
        cloud_cut = cut_index(mv, DEFAULT_CLOUD_CUT, (cut + mv.last_cut) // 2)
    return make_plan(
        mv,
        cut,
        opts.codec,
        "edge",
        cloud_cut,
        opts.exit_threshold if cloud_cut is not None else None,
        reason="demo: device head, edge exit at block 10, cloud finishes",
    )


def run_demo(
    opts: DemoOptions,
    settings: Settings,
    on_progress: Callable[[int, int], None] | None = None,
    on_dashboard: Callable[[str], None] | None = None,
    stop: Stop | None = None,
) -> dict:
    """Run the demo and return its summary (see ``summarize``); ``stop`` ends the stream
    early: the frames sent still end, and are summarised."""
    from splitmq.broker.launcher import Broker
    from splitmq.cloud.results import ResultsListener
    from splitmq.edge.worker import edge_worker
    from splitmq.shared.offline.zoo import ZOO, build
    from splitmq.shared.runtime.worker import Worker

    if opts.devices < 1 or opts.frames < 1:
        raise UserError("--devices and --frames must be at least 1")
    began = time.time()
    pool = ModelPool(settings.pool)
    if not pool.versions(opts.model):
        if opts.model not in ZOO:
            raise UserError(f"no model {opts.model!r} in the pool {pool.root}")
        build(pool, opts.model)
    mv = pool.get(opts.model)
    if mv.manifest.output.task != "classify":
        raise UserError(
            f"the demo scores top-1 answers; {mv.name} is a {mv.manifest.output.task} model: "
            "run it with `splitmq device --model` and the roles"
        )
    plan = local_plan(mv) if opts.planner else demo_plan(mv, opts)
    distinct = photos(min(opts.frames, DISTINCT_FRAMES), seed=DEMO_SEED)
    frames = [distinct[i % len(distinct)] for i in range(opts.frames)]  # references, no copies
    distinct_top1 = _reference_top1(mv, distinct)
    reference = [distinct_top1[i % len(distinct)] for i in range(opts.frames)]

    ids = [f"demo-dev{i}" for i in range(opts.devices)]
    with ExitStack() as stack:
        if opts.secure and opts.broker:
            raise UserError("--secure starts its own broker: leave out --broker")
        if opts.broker:
            settings = settings.model_copy(update={"broker": opts.broker})
            login = _same(settings)
        elif opts.secure:
            login = _secure_stack(stack, settings, ids)
            settings = login("monitor")
        else:
            broker = stack.enter_context(Broker())
            settings = settings.model_copy(update={"broker": broker.address})
            login = _same(settings)
        # Entered first, closed last: it keeps every tier's answers from result/+ until the
        # devices and workers stop (as the monitor: it only reads).
        recorder = None
        if opts.results:  # this run's own: no session left behind on a shared broker
            rec_id = f"demo-recorder-{uuid.uuid4().hex[:8]}"
            rec = ResultsListener(login("monitor"), opts.results, rec_id, durable=False)
            recorder = stack.enter_context(rec)
        if opts.dashboard is not None:  # before the roles start: the page sees them arrive
            from splitmq.dashboard.server import Dashboard

            page = stack.enter_context(Dashboard(login("monitor"), port=opts.dashboard))
            if on_dashboard:
                on_dashboard(page.url)
        stack.enter_context(edge_worker(login("edge"), "demo-edge"))
        stack.enter_context(Worker(login("cloud"), "cloud", "demo-cloud"))
        if opts.planner:
            stack.enter_context(PlannerService(login("planner"), "demo-planner"))
        devices = []
        for i, device_id in enumerate(ids):
            link, speed = PROFILES[i % len(PROFILES)]
            devices.append(
                stack.enter_context(
                    Device(
                        login(device_id),
                        device_id,
                        plan,
                        conditions=Emulated(Link.parse(link), speed),
                        window=4,
                        timeout_s=10.0,
                        follow=opts.planner,
                        telemetry_period_s=1.0,
                    )
                )
            )
        if opts.planner:
            _await_plans(devices)
        for dev in devices:  # first requests load sessions on every tier: not measured
            dev.infer(frames[0])
        started = time.monotonic()
        stop = stop or Stop()
        stop.streaming.set()
        futures = _stream(devices, frames, on_progress, stop.requested)
        sent = [i for i, f in enumerate(futures) if f is not None]  # all, unless stopped
        answers = [outcome(f) for f in futures if f is not None]
        reference = [reference[i] for i in sent]
        wall_s = time.monotonic() - started
        if recorder:  # every answer (and warm-up) on result/+, before the store closes
            expected = len(devices) + sum(isinstance(a, Answer) for a in answers)
            if not recorder.wait_heard(expected, RECORD_WAIT_S):
                log.warning("the results store got %s of %d answers", recorder.counts(), expected)
    summary = summarize(plan, devices, answers, reference, wall_s, settings)
    summary["results"] = str(recorder.recorder.store.url) if recorder else None
    if opts.planner:  # seconds from the demo's start; a plan re-published as it was is none
        told = timeline(devices, began)
        told["switches"] = [s for s in told["switches"] if s["from"] != s["to"]]
        summary.update(told)
    return summary


#: How long the demo waits for the last answers to reach its results store.
RECORD_WAIT_S = 10.0
#: How long the demo waits for the planner to plan every device with a link estimate.
PLAN_WAIT_S = 20.0


def _await_plans(devices: list[Device]) -> None:
    """Until each device runs a plan the planner made knowing its link (or a while)."""
    deadline = time.monotonic() + PLAN_WAIT_S
    for dev in devices:
        while time.monotonic() < deadline and not dev.plan.alternatives:
            time.sleep(0.1)  # pacing the wait: the plans arrive on their own


def _reference_top1(mv: ModelVersion, frames: list[np.ndarray]) -> list[int]:
    """Top-1 of the unsplit model, run locally: what every answer is checked against."""
    session = make_session(mv.model_bytes)
    pre = mv.manifest.preprocess
    if pre is None:
        raise UserError(f"{mv.name} has no preprocessing in its manifest: the demo needs images")
    if not frames:
        return []
    x = normalize(np.concatenate([to_pixels(f, pre) for f in frames]), pre)
    logits = run_batched(
        session, [mv.output_names[-1]], mv.cuts[0].name, x, mv.graph.batch, most=8
    )[0]
    return [int(top) for top in class_of(logits)]


def _stream(
    devices: list[Device],
    frames: list[np.ndarray],
    on_progress: Callable[[int, int], None] | None,
    stop: threading.Event,
) -> list[Future | None]:
    """Each device sends its share of the frames from its own thread, pipelined, until
    ``stop`` is set; the frames not sent are None."""
    futures: list[Future | None] = [None] * len(frames)
    done: Counter[str] = Counter()
    lock = threading.Lock()

    def tick(_: Future) -> None:
        with lock:
            done["n"] += 1
            n = done["n"]
        if on_progress:
            on_progress(n, len(frames))

    def feed(k: int) -> None:
        for i in range(k, len(frames), len(devices)):
            if stop.is_set():
                return
            fut = devices[k].submit(frames[i])
            fut.add_done_callback(tick)
            futures[i] = fut

    threads = [threading.Thread(target=feed, args=(k,)) for k in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return futures


def summarize(
    plan: Plan,
    devices: list[Device],
    answers: list,
    reference: list[int],
    wall_s: float,
    settings: Settings,
) -> dict:
    """The run's ``Summary`` (agreement: answers whose top-1 is the unsplit model's),
    with the plan, the mean time of each hop's parts, bytes per frame and throughput."""
    summary = Summary(labels=reference)
    for i, end in enumerate(answers):
        summary.add_outcome(i, end)
    ok = [a for a in answers if isinstance(a, Answer)]
    hops: dict[str, list[dict]] = {}
    for a in ok:
        for h in a.latency:
            hops.setdefault(h.tier, []).append(
                {
                    "compute_ms": h.compute_ms,
                    "encode_ms": h.encode_ms,
                    "transfer_ms": h.transfer_ms,
                    "queue_ms": h.queue_ms,
                }
            )
    breakdown = {
        tier: {
            k: round(statistics.mean(r[k] for r in rows), 3)
            for k in rows[0]
            if rows[0][k] is not None
        }
        for tier, rows in hops.items()
    }
    return {
        "model": plan.model,
        "version": plan.version,
        "cut": plan.cut,
        "codec": plan.codec,
        "route": [
            {"tier": h.tier, "to": h.to, "exit": h.exit, "codec": h.codec} for h in plan.route
        ],
        "broker": settings.where,
        "secure": settings.broker_url.tls,
        "devices": len(devices),
        **summary.counts(len(answers)),
        "per_hop_ms": breakdown,
        "bytes_per_frame": round(statistics.mean(a.bytes_sent for a in ok)) if ok else None,
        "agreement": summary.accuracy(),
        "retried": summary.retried,
        "wall_s": round(wall_s, 2),
        "fps": round(len(ok) / wall_s, 2) if wall_s else None,
    }
