"""`splitmq demo --scenario ...`: the control loop on one machine while things change.

Each scenario starts a broker, a cloud worker, edge workers, the planner and
devices that follow it, streams real photos at a fixed frame rate for a
while, makes something happen, and checks the planner's answer to it:

- **link-drop**: device 0 (a tenth of this host's speed) falls from
  50 to 1 Mbit/s at t = 10 s. Its plan must switch within 3 s, reach the
  plan it ends on within 10 s (the link estimate may pass through values in
  between), and from then its p50 must be within 1.2x of the best fixed plan
  for the new link, measured at the end of the same run.
- **edge-failure**: both edge workers (processes of their own) are killed
  at t = 8 s and started again at t = 16 s (the cloud is half as fast, so
  the edge is worth coming back to). Devices on the edge must fail
  over within 1 s of the Last Wills, and come back once it returns.
- **crowd**: ten devices, four very slow (1/20 of this host) and six at
  half its speed, 4 frames/s each, and one edge worker with one thread
  emulating a server at half this host's speed, no cloud: all of them
  would saturate it; the planner must not send them all there.
- **battery**: device 0's battery crosses 20%: its objective becomes energy
  (its SLO kept), and the new plan's reason says so.

Every request ends as an answer or a visible failure; ``lost`` counts the
rest and must be 0.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field

from splitmq.cli.demo_run import outcome, timeline
from splitmq.cli.scenario_checks import CHECKS, percentile
from splitmq.device.follow import local_plan
from splitmq.device.link import LinkSchedule
from splitmq.device.runtime import Answer, Device
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.errors import SplitMQError, UserError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.datasets import photos
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

SCENARIOS = ("link-drop", "edge-failure", "crowd", "battery")
MODEL = "efficientnet-lite0"
DWELL_S = 5.0


@dataclass(frozen=True)
class Role:
    """One simulated device of a scenario."""

    link: str
    speed: float
    fps: float
    battery: float = 1.0
    battery_joules: float | None = None


@dataclass
class Setup:
    devices: list[Role]
    seconds: float
    edge_threads: int = 2
    edge_speed: float = 1.0
    edge_processes: bool = False  # edges in processes of their own (they get killed)
    cloud: bool = True
    cloud_speed: float = 1.0
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, "kill"|"restart")


SETUPS: dict[str, Callable[[], Setup]] = {
    "link-drop": lambda: Setup(
        [Role("50mbit/10ms@0,1mbit/40ms@10s", 0.1, 5.0), Role("20mbit/10ms", 0.5, 5.0)], 25.0
    ),
    "edge-failure": lambda: Setup(
        [Role("100mbit/5ms", 0.1, 5.0), Role("50mbit/10ms", 0.1, 5.0)],
        32.0,
        edge_threads=2,
        edge_processes=True,
        cloud_speed=0.5,  # the fallback is worse than the edge: devices must come back
        events=[(8.0, "kill"), (16.0, "restart")],
    ),
    "crowd": lambda: Setup(
        [Role("100mbit/5ms", 0.05, 4.0) for _ in range(4)]
        + [Role("100mbit/5ms", 0.5, 4.0) for _ in range(6)],
        25.0,
        edge_threads=1,
        edge_speed=0.5,
        cloud=False,
    ),
    "battery": lambda: Setup(
        [Role("8mbit/30ms", 0.25, 5.0, battery=0.215, battery_joules=40.0)], 20.0
    ),
}


def run_scenario(
    name: str, settings: Settings, broker: str | None = None, seconds: float | None = None
) -> dict:
    """Run scenario ``name`` and return its summary (see ``_summary``)."""
    if name not in SETUPS:
        raise UserError(f"unknown scenario {name!r}: use one of {', '.join(SCENARIOS)}")
    setup = SETUPS[name]()
    run = run_setup(setup, settings, broker, seconds, reference=name == "link-drop")
    return _summary(name, run.devices, setup, run.outcomes, run.t0, run.wills, run.reference)


@dataclass
class Run:
    """What a setup's run left: its devices, every request's outcome (device index,
    unix time sent, answer or failure), its start, the edges' Last Wills."""

    devices: list[Device]
    outcomes: list[tuple[int, float, Answer | SplitMQError | None]]
    t0: float
    wills: list[float]
    reference: dict | None = None


def run_setup(
    setup: Setup,
    settings: Settings,
    broker: str | None = None,
    seconds: float | None = None,
    *,
    pinned: Plan | None = None,
    reference: bool = False,
) -> Run:
    """Run ``setup``: devices follow the planner, or all run ``pinned`` (no planner then)."""
    from splitmq.broker.launcher import Broker
    from splitmq.cloud.worker import cloud_worker

    mv = ModelPool(settings.pool).get(MODEL)
    frames = photos(24, seed=7)
    with ExitStack() as stack:
        if broker:
            settings = settings.model_copy(update={"broker": broker})
        else:
            settings = settings.model_copy(update={"broker": stack.enter_context(Broker()).address})
        if setup.cloud:
            stack.enter_context(cloud_worker(settings, "demo-cloud", speed=setup.cloud_speed))
        edges = _Edges(settings, setup, stack)
        if pinned is None:
            control = Control(dwell_s=DWELL_S)
            speeds = {"edge": setup.edge_speed, "cloud": setup.cloud_speed}  # as an operator knows
            planner = PlannerService(settings, "demo-planner", control=control, speeds=speeds)
            stack.enter_context(planner)
        wills = _watch_edges(settings, stack)
        devices = [
            stack.enter_context(_device(settings, mv, f"demo-dev{i}", role, pinned))
            for i, role in enumerate(setup.devices)
        ]
        t0 = time.time()
        sent = _stream(devices, setup, frames, seconds or setup.seconds, edges)
        outcomes = [(k, t, outcome(f)) for k, t, f in sent]
        measured = _reference(settings, mv, setup, frames) if reference else None
    return Run(devices, outcomes, t0, wills, measured)


def _device(
    settings: Settings, mv: ModelVersion, device_id: str, role: Role, pinned: Plan | None
) -> Device:
    return Device(
        settings,
        device_id,
        pinned or local_plan(mv),
        link=LinkSchedule.parse(role.link),
        speed=role.speed,
        window=4,
        timeout_s=5.0,
        battery=role.battery,
        battery_joules=role.battery_joules,
        follow=pinned is None,
        telemetry_period_s=1.0,
    )


class _Edges:
    """The scenario's edge workers: in this process, or processes that can be killed."""

    def __init__(self, settings: Settings, setup: Setup, stack: ExitStack) -> None:
        from splitmq.edge.worker import edge_worker

        self.settings, self.setup = settings, setup
        self.procs: list[subprocess.Popen] = []
        if setup.edge_processes:
            self.start()
            stack.callback(self.kill)
        else:
            stack.enter_context(
                edge_worker(
                    settings, "demo-edge", threads=setup.edge_threads, speed=setup.edge_speed
                )
            )

    def start(self) -> None:
        env = {
            **os.environ,
            "SPLITMQ_BROKER": self.settings.broker,
            "SPLITMQ_POOL": str(self.settings.pool),
            "SPLITMQ_TOPIC_PREFIX": self.settings.topic_prefix,
        }
        ids = [f"demo-edge{k}" for k in range(2)]
        for worker_id in ids:
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "splitmq",
                        "edge",
                        "--id",
                        worker_id,
                        "--workers",
                        str(self.setup.edge_threads),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait_online(self.settings, ids)

    def kill(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()


def _wait_online(settings: Settings, ids: list[str], timeout: float = 60.0) -> None:
    online: set[str] = set()
    ready = threading.Event()

    def seen(msg) -> None:
        doc = json.loads(msg.payload)
        if doc.get("status") == "online":
            online.add(msg.topic.rsplit("/", 1)[-1])
            if online >= set(ids):
                ready.set()

    with MqttClient(settings, "demo-watch-edges") as client:
        client.subscribe(settings.topics.role_filter("edge"), seen)
        if not ready.wait(timeout):
            raise UserError(f"edge workers {ids} did not come online in {timeout:g} s")


def _watch_edges(settings: Settings, stack: ExitStack) -> list[float]:
    """Unix times at which an edge worker's Last Will (offline) arrived."""
    times: list[float] = []
    client = stack.enter_context(MqttClient(settings, "demo-watch-wills"))

    def seen(msg) -> None:
        if msg.payload and json.loads(msg.payload) == {"status": "offline"}:
            times.append(time.time())

    client.subscribe(settings.topics.role_filter("edge"), seen)
    return times


def _stream(
    devices: list[Device], setup: Setup, frames: list, seconds: float, edges: _Edges
) -> list[tuple[int, float, Future]]:
    """Every device sends ``fps`` frames a second for ``seconds``; events happen on time."""
    sent: list[tuple[int, float, Future]] = []
    lock = threading.Lock()
    start = time.time()

    def feed(k: int, role: Role) -> None:
        i = 0
        while (now := time.time()) < start + seconds:
            future = devices[k].submit(frames[(k * 7 + i) % len(frames)])
            with lock:
                sent.append((k, now, future))
            i += 1
            delay = start + i / role.fps - time.time()
            if delay > 0:
                time.sleep(delay)

    threads = [threading.Thread(target=feed, args=(k, r)) for k, r in enumerate(setup.devices)]
    for t in threads:
        t.start()
    for at, action in setup.events:
        delay = start + at - time.time()
        if delay > 0:
            time.sleep(delay)
        if action == "kill":
            edges.kill()
        else:
            edges.start()
    for t in threads:
        t.join()
    return sent


def _reference(settings: Settings, mv: ModelVersion, setup: Setup, frames: list) -> dict:
    """The best fixed plan for device 0's last link, measured in turns (9 frames each)."""
    role = setup.devices[0]
    link = LinkSchedule.parse(role.link).steps[-1][1]
    candidates = {
        "device-only": make_plan(mv, mv.last_cut, "raw"),
        "cut 55 int8+zstd": make_plan(mv, 55, "int8+zstd"),
        "cut 43 int8+zstd": make_plan(mv, 43, "int8+zstd"),
        "cut 54 q4+zstd": make_plan(mv, 54, "q4+zstd"),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with ExitStack() as stack:
        devs = {
            name: stack.enter_context(
                Device(settings, f"demo-ref{k}", plan, link=link, speed=role.speed, window=1)
            )
            for k, (name, plan) in enumerate(candidates.items())
        }
        for dev in devs.values():
            dev.infer(frames[0])
        for turn in range(9):
            for name, dev in devs.items():
                times[name].append(dev.infer(frames[1 + turn]).e2e_ms)
    p50 = {name: round(statistics.median(ts), 2) for name, ts in times.items()}
    best = min(p50, key=p50.__getitem__)
    return {"link": str(link), "p50_ms": p50, "best": best, "best_ms": p50[best]}


def _summary(
    name: str,
    devices: list[Device],
    setup: Setup,
    outcomes: list[tuple[int, float, Answer | SplitMQError | None]],
    t0: float,
    wills: list[float],
    reference: dict | None,
) -> dict:
    ok = [(k, t, a) for k, t, a in outcomes if isinstance(a, Answer)]
    errors = [a for _, _, a in outcomes if isinstance(a, SplitMQError)]
    e2e = [a.e2e_ms for _, _, a in ok]
    told = timeline(devices, t0)
    switches = told["switches"]
    summary = {
        "scenario": name,
        "seconds": setup.seconds,
        "devices": len(devices),
        "frames": len(outcomes),
        "answered": len(ok),
        "errors": len(errors),
        "lost": len(outcomes) - len(ok) - len(errors),
        "error_messages": sorted({str(e) for e in errors})[:5],
        "p50_ms": percentile(e2e, 50),
        "p95_ms": percentile(e2e, 95),
        "by_tier": _count(a.tier for _, _, a in ok),
        **told,
    }
    checks = CHECKS[name](devices, switches, ok, t0, wills, reference)
    summary["checks"] = checks
    if reference is not None:
        summary["reference"] = reference
    return summary


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
