"""Sites: escalations across a bridge against one broker, and WAN outages, in one run.

A. Escalation latency. The same digits, model (mnist-cnn) and plan (the raw input to
the edge, the edge to ``last_cut - 1``, the cloud the rest), one request at a time,
through two setups alive side by side, in alternating turns (order shuffled per turn)
so the shared host's noise hits both alike; for each WAN RTT a fresh pair:

- *single*: device, edge and cloud worker on one secure broker, the cloud worker
  reaching it across the WAN (``lab.wan.WanRelay``): the cloud tier's path today;
- *bridged*: device and edge on a site broker bridged across the same kind of WAN to
  the cloud broker, where the cloud worker is (issue 23's deployment).

``--site-mosquitto`` runs the site broker from another binary or a wrapper, to compare
a bridge built otherwise (mosquitto 2.0.11's bridge socket has Nagle on: see
docs/benchmarks.md, Sites).

B. WAN outages, bridged only, as tests/test_sites.py: a slow device following the
site's planner streams onto the cloud; each outage cuts the WAN for ``--outage-s``.
Measured from the cut/restore: the bridge state (``$SYS/.../state``) seen 0/1 and the
device's plan off/back on the cloud; every request must end answered or failed
visibly (lost = never resolved).

    SPLITMQ_POOL=.pool .venv/bin/python bench/bench_sites.py [--rtts 0,20,40] [--turns 4] \
        [--requests 200] [--outages 3] [--outage-s 10] [--site-mosquitto PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from splitmq.broker.launcher import Broker
from splitmq.device.answers import InferenceFailed
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.sites import SiteAndCloud
from splitmq.lab.wan import WanRelay
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.protocol.sites import bridge_state
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings
from splitmq.shared.transport.messages import Message
from splitmq.shared.transport.mqtt import MqttClient

MODEL = "mnist-cnn"
SITE = "north"
#: The emulated WAN's rate: both setups' requests (785 B) cross it in well under 1 ms.
WAN_BPS = 100e6
WARMUP = 20


def _until(cond: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s")
        time.sleep(0.01)


class Setup:
    """The cloud broker, the WAN to it and a site broker bridged across it
    (``lab.sites``, loopback relay); with ``single``, also a lone broker whose cloud
    worker reaches it across a second WAN."""

    def __init__(
        self, stack: ExitStack, root: Path, rtt_ms: float, single: bool, binary: Path | None
    ) -> None:
        pair = SiteAndCloud(root, rtt_ms, WAN_BPS, devices=("cam1", "cam2"), binary=binary)
        stack.callback(pair.close)
        self.cloud_dir, self.cloud, self.wan, self.site = (
            pair.cloud_dir,
            pair.cloud,
            pair.wan,
            pair.site,
        )
        self.events: list[tuple[float, bool]] = []  # (monotonic, bridge up) as heard
        self.watch = MqttClient(self.site.user_settings("monitor").connection("bench-watch"))
        self.watch.connect()
        stack.callback(self.watch.close)
        self.watch.subscribe(bridge_state(SITE), self._heard, qos=0)
        self.heard: dict[str, list[float]] = {}  # name: when each message came
        _until(lambda: self.bridge_up, "bridge up", 20)
        if single:
            self.cloud_dir.add_device("cam1")  # the lone broker's device
            self.lone = stack.enter_context(Broker(secure=self.cloud_dir.root))
            target = ("127.0.0.1", self.lone.tls_port)
            self.lone_wan = stack.enter_context(WanRelay(target, rtt_ms, WAN_BPS))

    def _heard(self, msg: Message) -> None:
        self.events.append((time.monotonic(), msg.payload.strip() == b"1"))

    def listen(self, name: str, topic: str) -> None:
        """Note (as ``name``) when each message on ``topic`` reaches the site broker."""
        times = self.heard.setdefault(name, [])
        self.watch.subscribe(topic, lambda m: times.append(time.monotonic()), qos=0)

    @property
    def bridge_up(self) -> bool:
        return bool(self.events) and self.events[-1][1]


def escalations(args: argparse.Namespace, pool: Path, root: Path) -> list[dict]:
    """Part A: p50/p95 of both setups per RTT, measured in alternating turns."""
    mv = ModelPool(pool).get(MODEL)
    plan = make_plan(mv, 0, "raw", "edge", cloud_cut=mv.last_cut - 1)
    digits = mnist_digits()[0][:100]
    p = {"pool": pool}
    rows = []
    for rtt in args.rtts:
        with ExitStack() as stack:
            s = Setup(stack, root / f"rtt{rtt:g}", rtt, True, args.site_mosquitto)
            lone_url = f"mqtts://127.0.0.1:{s.lone_wan.port}"
            devices: dict[str, Device] = {}
            for name, cloud_cfg, edge_cfg, dev_cfg in (
                (
                    "single",
                    s.cloud_dir.settings("cloud", lone_url, **p),
                    s.lone.user_settings("edge", **p),
                    s.lone.user_settings("cam1", **p),
                ),
                (
                    "bridged",
                    s.cloud.user_settings("cloud", **p),
                    s.site.user_settings("edge", site=SITE, **p),
                    s.site.user_settings("cam1", **p),
                ),
            ):
                stack.enter_context(Worker(cloud_cfg, "cloud", f"cloud-{name}", threads=1))
                stack.enter_context(edge_worker(edge_cfg, f"edge-{name}", threads=1))
                dev = Device(dev_cfg, "cam1", plan, window=1, timeout_s=10)
                devices[name] = stack.enter_context(dev)
            ms: dict[str, list[float]] = {n: [] for n in devices}
            tiers: dict[str, Counter] = {n: Counter() for n in devices}
            for dev in devices.values():
                _turn(dev, digits, WARMUP, [], Counter())
            order = list(devices)
            for _ in range(args.turns):
                random.shuffle(order)
                for name in order:
                    _turn(devices[name], digits, args.requests, ms[name], tiers[name])
        row: dict[str, Any] = {"rtt_ms": rtt}
        for name in devices:
            row[name] = {
                "n": len(ms[name]),
                "p50_ms": round(statistics.median(ms[name]), 2),
                "p95_ms": round(float(np.percentile(ms[name], 95)), 2),
                "tiers": dict(tiers[name]),
            }
        row["ratio_p50"] = round(row["bridged"]["p50_ms"] / row["single"]["p50_ms"], 3)
        row["ratio_p95"] = round(row["bridged"]["p95_ms"] / row["single"]["p95_ms"], 3)
        rows.append(row)
        print(f"rtt {rtt:g} ms: {json.dumps(row)}", flush=True)
    return rows


def _turn(dev: Device, digits: np.ndarray, n: int, ms: list[float], tiers: Counter) -> None:
    for i in range(n):
        try:
            answer = dev.infer(digits[i % len(digits)])
        except InferenceFailed as exc:
            tiers[f"failed:{exc.code}"] += 1
            continue
        tiers[answer.tier] += 1
        if answer.tier == "cloud":
            ms.append(answer.e2e_ms)


def outages(args: argparse.Namespace, pool: Path, root: Path) -> dict:
    """Part B: ``--outages`` WAN cuts under a stream; what moved when, what was lost."""
    mv = ModelPool(pool).get(MODEL)
    digits = mnist_digits()[0][:50]
    sent: list[tuple[float, Future]] = []
    plans: list[tuple[float, str]] = []  # (monotonic, the device's plan) at each change
    cuts: list[tuple[float, float]] = []
    stop = threading.Event()
    with ExitStack() as stack:
        s = Setup(stack, root / "outage", args.outage_rtt, False, args.site_mosquitto)
        for role in ("cloud", "edge"):  # telemetry: when the planner can know of a tier
            s.listen(role, s.site.user_settings("monitor").topics.telemetry(role, f"o-{role}"))
        _, dev = s.offloading(stack, pool, mv, "cam2", "o")

        def ready() -> bool:
            return "cloud" in dev.plan.tiers and s.bridge_up

        def watch() -> None:  # the plan's changes, sampled every 5 ms
            while not stop.is_set():
                words = dev.plan.words
                if not plans or plans[-1][1] != words:
                    plans.append((time.monotonic(), words))
                time.sleep(0.005)

        def stream() -> None:
            while not stop.is_set():
                sent.append((time.monotonic(), dev.submit(digits[len(sent) % len(digits)])))

        threads = [threading.Thread(target=f, daemon=True) for f in (watch, stream)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        try:
            _until(ready, "plan onto the cloud", 60)
            first_on_cloud_s = time.monotonic() - t0
            for _ in range(args.outages):
                _until(ready, "plan on the cloud", 60)
                time.sleep(args.settle_s)
                _until(ready, "plan on the cloud", 60)  # if it moved off meanwhile
                cut_at = time.monotonic()
                s.wan.cut()
                time.sleep(max(0.0, cut_at + args.outage_s - time.monotonic()))
                s.wan.restore()
                cuts.append((cut_at, time.monotonic()))
                _until(ready, "plan back on the cloud", 60)
            time.sleep(args.settle_s)
        finally:
            s.wan.restore()
            stop.set()
            for t in threads:
                t.join()
        _, pending = wait([f for _, f in sent], timeout=30)
    cloud = [(t, "cloud" in w) for t, w in plans]
    tel = {role: [(t, True) for t in times] for role, times in s.heard.items()}
    per = []
    for cut_at, back_at in cuts:
        during = [f for at, f in sent if cut_at <= at < back_at]
        per.append(
            {
                "bridge_down_s": _after(s.events, cut_at, False),
                "plan_off_cloud_s": _after(cloud, cut_at, False),
                "bridge_up_s": _after(s.events, back_at, True),
                "cloud_telemetry_s": _after(tel["cloud"], back_at, True),
                "edge_telemetry_s": _after(tel["edge"], back_at, True),
                "plan_back_s": _after(cloud, back_at, True),
                "sent_during": len(during),
                "during": _outcomes(during),
            }
        )
    moves_off = [t for (t, on), (_, was) in zip(cloud[1:], cloud, strict=False) if was and not on]
    total = _outcomes([f for _, f in sent])
    failures = {k: v for k, v in total.items() if k.startswith("failed")}
    return {
        "first_on_cloud_s": round(first_on_cloud_s, 2),
        "outages": per,
        "sent": len(sent),
        "answered": {k: v for k, v in total.items() if k not in failures and k != "lost"},
        "failed": sum(failures.values()),
        "failures": failures,
        "lost": len(pending),
        "off_cloud_with_wan_up": sum(not any(a <= t < b for a, b in cuts) for t in moves_off),
        "plans": [(round(t - t0, 2), w) for t, w in plans],
        "bridge": [(round(t - t0, 2), up) for t, up in s.events],
        "cuts": [(round(a - t0, 2), round(b - t0, 2)) for a, b in cuts],
    }


def _after(events: list[tuple[float, bool]], t: float, state: bool) -> float | None:
    """Seconds from ``t`` to the first event at or after it with ``state``."""
    return next((round(at - t, 3) for at, st in events if at >= t and st == state), None)


def _outcomes(futures: list[Future]) -> dict[str, int]:
    """Each request's end: the answering tier, ``failed:<code>``, or ``lost``."""
    c: Counter = Counter()
    for f in futures:
        if not f.done():
            c["lost"] += 1
        elif (exc := f.exception()) is not None:
            c[f"failed:{getattr(exc, 'code', type(exc).__name__)}"] += 1
        else:
            c[f.result().tier] += 1
    return dict(c)


def report(rows: list[dict], out: dict, args: argparse.Namespace) -> None:
    console = Console()
    a = Table(title=f"A. escalation e2e ms, {MODEL}, {args.turns} turns × {args.requests}")
    for col in ("RTT ms", "single p50", "bridged p50", "ratio", "single p95", "bridged p95"):
        a.add_column(col, justify="right")
    a.add_column("ratio p95", justify="right")
    for r in rows:
        one, two = r["single"], r["bridged"]
        a.add_row(
            f"{r['rtt_ms']:g}",
            f"{one['p50_ms']:.2f}",
            f"{two['p50_ms']:.2f}",
            f"{r['ratio_p50']:.3f}",
            f"{one['p95_ms']:.2f}",
            f"{two['p95_ms']:.2f}",
            f"{r['ratio_p95']:.3f}",
        )
    if rows:
        console.print(a)
    if not out:
        return
    b = Table(title=f"B. {args.outage_s:g} s WAN outages, RTT {args.outage_rtt:g} ms: s after")
    keys = ("bridge_down_s", "plan_off_cloud_s", "bridge_up_s", "cloud_telemetry_s")
    for col in ("#", "bridge 0", "plan off", "bridge 1", "cloud tel.", "plan back", "sent"):
        b.add_column(col, justify="right")
    b.add_column("answers during the outage")
    for i, o in enumerate(out["outages"], 1):
        b.add_row(
            str(i),
            *(str(o[k]) for k in (*keys, "plan_back_s")),
            str(o["sent_during"]),
            json.dumps(o["during"]),
        )
    console.print(b)
    console.print(
        f"requests {out['sent']}, answered {out['answered']}, failed {out['failed']} "
        f"{out['failures']}, lost {out['lost']}; moved off the cloud with the WAN up "
        f"{out['off_cloud_with_wan_up']} times"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtts", default="0,20,40", help="WAN RTTs in ms, comma-separated")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200, help="per turn and setup")
    ap.add_argument("--outages", type=int, default=3)
    ap.add_argument("--outage-s", type=float, default=10.0)
    ap.add_argument("--outage-rtt", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=3.0, help="on the cloud before a cut")
    ap.add_argument("--json", type=Path, metavar="PATH")
    ap.add_argument(
        "--site-mosquitto", type=Path, help="the site broker's binary (or a wrapper of it)"
    )
    args = ap.parse_args()
    args.rtts = [float(x) for x in args.rtts.split(",") if x]
    pool = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-sites-") as tmp:
        rows = escalations(args, pool, Path(tmp)) if args.rtts else []
        out = outages(args, pool, Path(tmp)) if args.outages else {}
    summary = {
        "model": MODEL,
        "turns": args.turns,
        "requests_per_turn": args.requests,
        "escalations": rows,
        "wan_outages": {"outage_s": args.outage_s, "rtt_ms": args.outage_rtt, **out},
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    report(rows, out, args)
    print(f"took {summary['seconds']} s")


if __name__ == "__main__":
    main()
