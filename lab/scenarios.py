"""The control loop on one machine while things change (`splitmq demo --scenario ...`).

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

import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field

from splitmq.device.answers import Answer
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.checks import CHECKS
from splitmq.lab.emulation import Emulated
from splitmq.lab.link import LinkSchedule
from splitmq.lab.reference import best_fixed
from splitmq.lab.spawn import kill, spawn
from splitmq.lab.speed import slowed
from splitmq.lab.summary import Summary, outcome
from splitmq.lab.timeline import timeline
from splitmq.planner import TierState
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.errors import SplitMQError, UserError
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.datasets import photos
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import Message, MqttClient

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
    return _summary(name, setup, run)


@dataclass
class Run:
    """What a setup's run left: its devices, every request's outcome (device index,
    unix time sent, answer or failure), its start, the edges' Last Wills."""

    devices: list[Device]
    outcomes: list[tuple[int, float, Answer | SplitMQError | None]]
    t0: float
    wills: list[float]
    started: list[float]  # when each device's link schedule began (unix time)
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

    mv = ModelPool(settings.pool).get(MODEL)
    frames = photos(24, seed=7)
    with ExitStack() as stack:
        if broker:
            settings = settings.model_copy(update={"broker": broker})
        else:
            settings = settings.model_copy(update={"broker": stack.enter_context(Broker()).address})
        if setup.cloud:
            cloud = Worker(settings, "cloud", "demo-cloud", executor=slowed(setup.cloud_speed))
            stack.enter_context(cloud)
        edges = _Edges(settings, setup, stack)
        if pinned is None:
            control = Control(dwell_s=DWELL_S)
            speeds = {"edge": setup.edge_speed, "cloud": setup.cloud_speed}  # as an operator knows
            planner = PlannerService(settings, "demo-planner", control=control, speeds=speeds)
            stack.enter_context(planner)
        wills = _watch_edges(settings, stack)
        conditions = [_conditions(role) for role in setup.devices]
        devices = [
            stack.enter_context(_device(settings, mv, f"demo-dev{i}", c, pinned))
            for i, c in enumerate(conditions)
        ]
        t0 = time.time()
        sent = _stream(devices, setup, frames, seconds or setup.seconds, edges)
        outcomes = [(k, t, outcome(f)) for k, t, f in sent]
        measured = _reference(settings, mv, setup, frames) if reference else None
    return Run(devices, outcomes, t0, wills, [c.started_at for c in conditions], measured)


def _conditions(role: Role) -> Emulated:
    return Emulated(LinkSchedule.parse(role.link), role.speed, role.battery, role.battery_joules)


def _device(
    settings: Settings, mv: ModelVersion, device_id: str, conditions: Emulated, pinned: Plan | None
) -> Device:
    return Device(
        settings,
        device_id,
        pinned or local_plan(mv),
        conditions=conditions,
        window=4,
        timeout_s=5.0,
        follow=pinned is None,
        telemetry_period_s=1.0,
    )


class _Edges:
    """The scenario's edge workers: in this process, or processes that can be killed."""

    def __init__(self, settings: Settings, setup: Setup, stack: ExitStack) -> None:
        self.settings, self.setup = settings, setup
        self.procs: list[subprocess.Popen] = []
        if setup.edge_processes:
            self.start()
            stack.callback(self.kill)
        else:
            stack.enter_context(
                edge_worker(
                    settings,
                    "demo-edge",
                    threads=setup.edge_threads,
                    executor=slowed(setup.edge_speed),
                )
            )

    def start(self) -> None:
        args = ["--workers", str(self.setup.edge_threads)]
        self.procs = spawn(
            self.settings, "edge", [f"demo-edge{k}" for k in range(2)], args, quiet=True
        )

    def kill(self) -> None:
        kill(self.procs)
        self.procs = []


def _watch_edges(settings: Settings, stack: ExitStack) -> list[float]:
    """Unix times at which an edge worker's Last Will (offline) arrived."""
    times: list[float] = []
    client = stack.enter_context(MqttClient(settings.connection("demo-watch-wills")))

    def seen(msg: Message) -> None:
        if msg.payload and msg.json() == {"status": "offline"}:
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
    """The best fixed plan for device 0's last link, measured (``lab.reference``)."""
    role = setup.devices[0]
    link = LinkSchedule.parse(role.link).steps[-1][1]
    tiers = {"edge": TierState("edge", setup.edge_threads, speed=setup.edge_speed)}
    if setup.cloud:
        tiers["cloud"] = TierState("cloud", speed=setup.cloud_speed)
    return best_fixed(settings, mv, link, role.speed, tiers, frames)


def _summary(name: str, setup: Setup, run: Run) -> dict:
    ok = [(k, t, a) for k, t, a in run.outcomes if isinstance(a, Answer)]
    summary = Summary()
    for i, (_, _, end) in enumerate(run.outcomes):
        summary.add_outcome(i, end)
    told = timeline(run.devices, run.t0)
    checks = CHECKS[name](
        run.devices, told["switches"], ok, run.t0, run.wills, run.reference, run.started
    )
    return {
        "scenario": name,
        "seconds": setup.seconds,
        "devices": len(run.devices),
        **summary.counts(len(run.outcomes)),
        **told,
        "checks": checks,
        **({"reference": run.reference} if run.reference is not None else {}),
    }
