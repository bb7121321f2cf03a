"""The tiny hop: what splitmq costs per message when the hop's compute is almost nothing.

MNIST CNN cut late (cut 10, int8: the edge runs only the two fc layers), one
pipelined device (window 32) and one `splitmq edge` worker (one thread, its own
process), against plain paho pipelines of the same sizes, QoS and broker doing
the same ONNX Runtime work (``tinyhop_pipes.py``): bare (bytes and nothing
else: the target's reference), "paho + format" (splitmq's message format,
unchecked) and "paho + wire" (splitmq's own wire code, every check, and none
of its runtime). The pipelines run in alternating turns of ``--seconds`` each,
so machine noise hits all alike; ratios are of the medians of the turns.
Target: splitmq ≥ 0.8 of bare.

    .venv/bin/python bench/bench_tinyhop.py [--turns 5] [--seconds 4] [--max-batch 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

from harness import bench_settings, start_worker
from rich.console import Console
from rich.table import Table
from tinyhop_pipes import CODEC, CUT, MODEL, WINDOW, BarePipeline, FormatPipeline, WirePipeline

from splitmq.broker.launcher import Broker
from splitmq.device.runtime import Device
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds a process has used (None: this one)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(run, server: int, seconds: float) -> tuple[float, float, float]:
    """Answers/s of ``run(seconds)``, and CPU µs per answer here and in ``server``."""
    here, there = cpu_s(), cpu_s(server)
    start = time.monotonic()
    rps = run(seconds)
    n = rps * (time.monotonic() - start)
    return rps, (cpu_s() - here) / n * 1e6, (cpu_s(server) - there) / n * 1e6


def splitmq_rps(dev: Device, frame, seconds: float) -> float:
    """Answers/s for a device that keeps its window full for ``seconds``."""
    start, futures = time.monotonic(), []
    while time.monotonic() - start < seconds:
        futures.append(dev.submit(frame))  # blocks while the window is full
    for f in futures:
        f.result(timeout=30)
    return len(futures) / (time.monotonic() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0, help="per turn")
    ap.add_argument("--max-batch", type=int, default=1, help="the edge worker's batch")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    pool_dir = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    mv = ModelPool(pool_dir).get(MODEL)
    frame = mv.graph.sample_input()
    with Broker() as broker:
        cfg = bench_settings(broker, pool_dir)
        worker = start_worker(cfg, 1, extra=["--max-batch", str(args.max_batch)])
        plan = make_plan(mv, CUT, CODEC)
        try:
            with Device(cfg, "bench-dev", plan, window=WINDOW) as dev:
                request_bytes = dev.infer(frame).bytes_sent
                result_bytes = result_size(cfg, dev, frame)
                head = SessionCache(ModelPool(pool_dir)).segment(mv, 0, CUT)
                pipes = [BarePipeline(cfg, result_bytes, WINDOW, head)]
                try:
                    pipes.append(FormatPipeline(cfg, WINDOW, head, mv))
                    pipes.append(WirePipeline(cfg, WINDOW, head, mv, plan))
                    rows = turns(args, dev, frame, worker.pid, pipes, request_bytes)
                finally:
                    for pipe in pipes:
                        pipe.close()
        finally:
            worker.terminate()
            worker.wait(30)
    report(args, request_bytes, result_bytes, rows)


def turns(args, dev: Device, frame, worker: int, pipes: list[BarePipeline], request_bytes: int):
    """The alternating turns: (req/s, CPU µs/req here, in the server) of splitmq, then of
    each of ``pipes``."""
    payload = os.urandom(request_bytes)
    runs = [(lambda s: splitmq_rps(dev, frame, s), worker)]
    for pipe in pipes:
        runs.append((lambda s, pipe=pipe: pipe.run(frame, payload, s), pipe.server.pid))
    for run, _ in runs:  # warm all up
        run(1.0)
    rows: list[list[tuple[float, float, float]]] = [[] for _ in runs]
    for _ in range(args.turns):
        for row, (run, server) in zip(rows, runs, strict=True):
            row.append(measured(run, server, args.seconds))
    return rows


def result_size(cfg: Settings, dev: Device, frame) -> int:
    """Bytes of one result as the broker carries it to the device."""
    got: list[int] = []
    done = threading.Event()
    with MqttClient(cfg.connection(f"sniff-{uuid.uuid4().hex[:6]}")) as sniff:
        sniff.subscribe(
            cfg.topics.result(dev.id), lambda m: (got.append(len(m.payload)), done.set()), qos=1
        )
        dev.infer(frame)
        assert done.wait(10), "no result seen"
    return got[0]


def report(args, request_bytes: int, result_bytes: int, rows: list) -> None:
    def med(turns: list, i: int) -> float:
        return statistics.median(t[i] for t in turns)

    ours, theirs, unchecked, wire = rows
    summary = {
        "model": MODEL,
        "cut": CUT,
        "codec": CODEC,
        "window": WINDOW,
        "request_bytes": request_bytes,
        "result_bytes": result_bytes,
        "turns": args.turns,
        "seconds": args.seconds,
        "splitmq_rps": [round(t[0], 1) for t in ours],
        "bare_rps": [round(t[0], 1) for t in theirs],
        "format_rps": [round(t[0], 1) for t in unchecked],
        "wire_rps": [round(t[0], 1) for t in wire],
        "splitmq_cpu_us": {"device": round(med(ours, 1)), "worker": round(med(ours, 2))},
        "bare_cpu_us": {"client": round(med(theirs, 1)), "echo": round(med(theirs, 2))},
        "format_cpu_us": {"client": round(med(unchecked, 1)), "echo": round(med(unchecked, 2))},
        "wire_cpu_us": {"client": round(med(wire, 1)), "echo": round(med(wire, 2))},
        "ratio": round(med(ours, 0) / med(theirs, 0), 3),
        "format_ratio": round(med(unchecked, 0) / med(theirs, 0), 3),
        "wire_ratio": round(med(wire, 0) / med(theirs, 0), 3),
        "target": 0.8,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    table = Table(title=f"Tiny hop: {MODEL} cut {CUT} {CODEC}, window {WINDOW}, one edge thread")
    for col in ("", "median req/s", "turns", "CPU µs/req: device", "server", "of bare"):
        table.add_column(col)
    named = [("splitmq", ours), ("paho + wire", wire), ("paho + format", unchecked)]
    for name, turns in [*named, ("bare paho", theirs)]:
        rps = " ".join(f"{t[0]:.0f}" for t in turns)
        of_bare = f"{med(turns, 0) / med(theirs, 0):.3f}"
        cpu = (f"{med(turns, 1):.0f}", f"{med(turns, 2):.0f}")
        table.add_row(name, f"{med(turns, 0):.0f}", rps, *cpu, of_bare)
    Console().print(table)
    Console().print(f"splitmq against bare paho: {summary['ratio']:.3f} (target ≥ 0.8)")


if __name__ == "__main__":
    main()
