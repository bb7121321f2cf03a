"""What the planner-against-oracle benches share: candidates, measuring them, the sweep.

A candidate is a plan with the planner's prediction for it; ``measure`` runs every
candidate's plan through a real broker and ``splitmq edge`` worker from a device with
an emulated link and speed, in round-robin turns, and keeps each one's p50 latency.
The oracle of a point is the candidate measured fastest.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import bench_settings, start_worker
from rich.console import Console
from rich.table import Table

from splitmq.broker.launcher import Broker
from splitmq.device.runtime import Device
from splitmq.lab.emulation import Emulated
from splitmq.planner import Link
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.protocol.plan import Option, Plan
from splitmq.shared.settings import Settings
from splitmq.shared.units import format_rate

#: A fixed candidate whose transfer time alone exceeds this many times the best measured
#: so far cannot be the oracle: it is not measured, its ratio is reported as a bound.
SKIP = 10.0
#: What makes two plans the same plan, whatever they are called.
SAME = {"model", "cut", "codec", "route", "exit"}


@dataclass
class Candidate:
    name: str
    plan: Plan
    predicted_ms: float
    transfer_ms: float  # lower bound: bytes at the link rate plus the RTT
    fixed: bool  # a fixed strategy (the same at every point), not one of the planner's
    measured_ms: float | None = None
    skipped: bool = False

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "model": self.plan.model,
            "cut": self.plan.cut,
            "codec": self.plan.codec,
            "predicted_ms": None if np.isnan(self.predicted_ms) else round(self.predicted_ms, 2),
            "measured_ms": None if self.measured_ms is None else round(self.measured_ms, 2),
        }


def as_plan(mv: ModelVersion, option: Option) -> Plan:
    fields = {name: getattr(option, name) for name in Option.model_fields}
    return Plan(model=mv.name, version=mv.version, reason="bench", **fields)


def candidate(name: str, plan: Plan, costs, row: int | None, link: Link, fixed: bool) -> Candidate:
    """``plan`` as a candidate, with the prediction of option ``row`` of ``costs``."""
    predicted = float(costs.latency_ms[row]) if row is not None else float("nan")
    nbytes = float(costs.bytes[row]) if row is not None else 0.0
    transfer = 0.0 if plan.device_only else nbytes * 8000 / link.bps + link.rtt_ms
    return Candidate(name, plan, predicted, transfer, fixed)


def measure(cands: list[Candidate], cfg: Settings, link: Link, speed: float, frames, rounds: int):
    """The p50 latency of every candidate, in round-robin turns of one frame each.

    Turns spread a burst of load from a noisy neighbour over all candidates
    instead of one; the same plan under two names is measured once. The
    first turn (after a warm-up frame: sessions load lazily on the worker)
    goes in order of prediction, so the best is known early and a fixed
    candidate that cannot be the oracle is skipped. Later turns go in an order
    shuffled anew (seeded), so no candidate always runs right after the same one:
    in the order of prediction the best always ran after the slowest, on a core
    left idle, colder. Candidates predicted
    over 300 ms get 3 turns.
    """
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.plan.model_dump_json(include=SAME), []).append(c)
    order = sorted(groups.values(), key=lambda g: min(c.predicted_ms for c in g))
    times: dict[int, list[float]] = {}
    with ExitStack() as stack:
        devices: dict[int, Device] = {}
        best = float("inf")
        for k, group in enumerate(order):
            if all(c.fixed for c in group) and group[0].transfer_ms > SKIP * best:
                for c in group:
                    c.skipped = True
                continue
            name = f"bench-{uuid.uuid4().hex[:6]}"
            conditions = Emulated(link, speed)
            dev = Device(cfg, name, group[0].plan, conditions=conditions, window=1, timeout_s=120)
            devices[k] = stack.enter_context(dev)
            devices[k].infer(frames[0])
            times[k] = [devices[k].infer(frames[1]).e2e_ms]
            best = min(best, times[k][0])
        measured = list(devices.items())
        for turn in range(1, rounds):
            # Each later turn in its own order: a run after a slow candidate (an idle
            # core, a cold cache) is slower, and a fixed order charges that to one.
            random.Random(turn).shuffle(measured)
            for k, dev in measured:
                if turn < 3 or order[k][0].predicted_ms <= 300:
                    times[k].append(dev.infer(frames[(turn + 1) % len(frames)]).e2e_ms)
    for k, group in enumerate(order):
        for c in group:
            c.measured_ms = statistics.median(times[k]) if k in times else None


def oracle_of(cands: Sequence[Candidate]) -> Candidate:
    """The candidate measured fastest."""
    inf = float("inf")
    return min(cands, key=lambda c: c.measured_ms if c.measured_ms is not None else inf)


def fixed_ratios(cands: Sequence[Candidate], oracle: Candidate) -> dict[str, dict[str, float]]:
    """Each fixed candidate's measured latency over the oracle's (``at_least``: skipped)."""
    best = oracle.measured_ms
    assert best is not None
    return {
        c.name: (
            {"ratio": round(c.measured_ms / best, 3)}
            if c.measured_ms is not None
            else {"at_least": round(c.transfer_ms / best, 3)}
        )
        for c in cands
        if c.fixed
    }


def fixed_ratio(point: dict, name: str) -> float | None:
    r = point["fixed"].get(name)
    return None if r is None else r.get("ratio", r.get("at_least"))


def worst_by_fixed(points: list[dict]) -> dict[str, float]:
    """Each fixed strategy's worst ratio to the oracle over the points, best first."""
    worst: dict[str, float] = {}
    for p in points:
        for name in p["fixed"]:
            worst[name] = max(worst.get(name, 0.0), fixed_ratio(p, name) or 0.0)
    return {k: round(v, 3) for k, v in sorted(worst.items(), key=lambda kv: kv[1])}


def accuracy_of(points: list[dict]) -> dict:
    """How the planner's plans fared over the points: against the oracle, and predicted."""
    ratios = [p["ratio"] for p in points]
    return {
        "points": len(points),
        "within_1.10": round(sum(r <= 1.10 for r in ratios) / len(ratios), 3),
        "worst_ratio": max(ratios),
        "median_error": round(statistics.median(p["error"] for p in points), 3),
        "median_decide_ms": round(statistics.median(p["decide_ms"] for p in points), 2),
    }


def preprocess_ms(mv: ModelVersion, frames) -> float:
    """What the device's preprocessing of these frames costs on this host (median ms)."""
    pre = mv.manifest.preprocess
    assert pre is not None
    times = []
    for frame in frames * 3:
        start = time.perf_counter()
        normalize(to_pixels(frame, pre), pre)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def grid(args: argparse.Namespace, quick: list, uplinks, rtts, speeds) -> list[tuple]:
    """The sweep's points, (uplink bit/s, RTT ms, speed), speed outermost."""
    return quick if args.quick else [(u, r, s) for s in speeds for r in rtts for u in uplinks]


def sweep(
    pool_dir: Path,
    points: list[tuple[float, float, float]],
    run_point: Callable[[Settings, float, float, float], dict],
    line: Callable[[dict], str],
) -> list[dict]:
    """``run_point`` at every point, over one broker and one edge worker (one thread)."""
    console = Console(stderr=True)
    done = []
    with Broker() as broker:
        cfg = bench_settings(broker, pool_dir)
        worker = start_worker(cfg, 1)
        try:
            for k, (up, rtt, speed) in enumerate(points, 1):
                point = run_point(cfg, up, rtt, speed)
                done.append(point)
                where = f"{format_rate(up)}/{rtt:g}ms speed {speed:g}"
                console.print(f"[{k}/{len(points)}] {where}: {line(point)}")
        finally:
            worker.terminate()
            worker.wait(30)
    return done


def parser(doc: str, plot: Path | None = None) -> argparse.ArgumentParser:
    """The options every oracle bench takes (``--plot`` where it draws one)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three points only")
    ap.add_argument("--frames", type=int, default=9, help="turns (frames) per candidate")
    ap.add_argument("--json", type=Path, help="write every point here")
    if plot is not None:
        ap.add_argument("--plot", type=Path, default=plot)
    ap.add_argument("--from", dest="source", type=Path, help="report and plot a saved --json")
    return ap


def points_of(args: argparse.Namespace, run: Callable[[], list[dict]], summarise) -> list[dict]:
    """The points: read from ``--from``, or measured now (and saved to ``--json``)."""
    if args.source:
        return json.loads(args.source.read_text())["points"]
    points = run()
    if args.json:
        args.json.write_text(json.dumps({"summary": summarise(points), "points": points}))
    return points


def point_cells(p: dict) -> list[str]:
    """The first cells of a point's row: uplink, RTT, speed."""
    return [format_rate(p["uplink_bps"]), f"{p['rtt_ms']:g}", f"{p['speed']:g}"]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=180).print(table)
