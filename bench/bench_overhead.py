"""What splitmq costs over the bare minimum, measured side by side in one run.

Latency: EfficientNet-Lite0 fully offloaded (cut 0, raw float32, 602 KB) to an
edge worker (`splitmq edge`, its own process) over loopback, against a bare
paho request/response carrying the same bytes to an echo process, plus a
local ONNX Runtime run of the same model. The two are measured in
alternating turns so machine noise hits both alike.

Throughput: requests/s one edge worker answers for a pipelined device,
against the local ONNX Runtime throughput of the same partition with the
same number of threads.

    .venv/bin/python bench/bench_overhead.py [--requests 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from harness import bench_settings, start_worker
from rich.console import Console
from rich.table import Table

from splitmq.broker.launcher import Broker
from splitmq.device.runtime import Device
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

MODEL = "efficientnet-lite0"


class BareEcho:
    """A bare paho request/response: ``payload`` out to an echo process, ``reply`` back."""

    def __init__(self, settings: Settings, reply_bytes: int) -> None:
        self.got = threading.Event()
        self.req, self.rsp = f"bench/{uuid.uuid4().hex}/req", f"bench/{uuid.uuid4().hex}/rsp"
        self.server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--echo",
                settings.broker,
                self.req,
                self.rsp,
                str(reply_bytes),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout and self.server.stdout.readline().strip() == "ready"
        self.client = MqttClient(settings.connection("bare-client")).connect()
        self.client.subscribe(self.rsp, lambda m: self.got.set())

    def round_trip(self, payload: bytes) -> float:
        self.got.clear()
        start = time.perf_counter()
        self.client.publish(self.req, payload, qos=1)
        if not self.got.wait(10):
            raise RuntimeError("bare round trip lost a message")
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(10)


def echo_server(broker: str, req: str, rsp: str, reply_bytes: int) -> None:
    """The bare responder, in its own process like a worker: every request gets a reply."""
    cfg = Settings(_env_file=None, broker=broker)
    reply = os.urandom(reply_bytes)
    with MqttClient(cfg.connection("bare-server")) as server:
        server.subscribe(req, lambda m: server.publish(rsp, reply, qos=1))
        print("ready", flush=True)
        threading.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput measurement")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="edge inference threads, and local ORT threads to compare with",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool_dir = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    mv = ModelPool(pool_dir).get(MODEL)
    frame = mv.graph.sample_input()
    cache = SessionCache(ModelPool(pool_dir))
    full = cache.segment(mv, 0, mv.last_cut)

    with Broker() as broker:
        cfg = bench_settings(broker, pool_dir)
        plan = make_plan(mv, 0, "raw")
        worker = start_worker(cfg, args.workers)
        try:
            with Device(cfg, "bench-dev", plan, window=1) as dev:
                for _ in range(10):
                    dev.infer(frame)  # warm up sessions, sockets, caches
                echo = BareEcho(cfg, 600)  # a JSON result with top-5 is ~600 B
                payload = os.urandom(frame.nbytes + 700)  # tensor + request header
                for _ in range(10):
                    echo.round_trip(payload)
                split_ms, bare_ms = [], []
                for _ in range(args.requests):  # alternating turns
                    split_ms.append(dev.infer(frame).e2e_ms)
                    rtt = echo.round_trip(payload)
                    start = time.perf_counter()
                    full.run(frame)
                    bare_ms.append((rtt + time.perf_counter() - start) * 1000)
                echo.close()
            local_rps = local_throughput(full, frame, args.workers, args.seconds)
            with Device(cfg, "bench-dev2", plan, window=2 * args.workers + 2) as dev:
                worker_rps = splitmq_throughput(dev, frame, args.seconds)
        finally:
            worker.terminate()
            worker.wait(30)

    p50_split, p50_bare = statistics.median(split_ms), statistics.median(bare_ms)
    summary = {
        "model": MODEL,
        "requests": args.requests,
        "payload_bytes": frame.nbytes,
        "splitmq_p50_ms": round(p50_split, 3),
        "bare_p50_ms": round(p50_bare, 3),
        "latency_ratio": round(p50_split / p50_bare, 3),
        "latency_target": 1.15,
        "worker_rps": round(worker_rps, 2),
        "local_rps": round(local_rps, 2),
        "throughput_ratio": round(worker_rps / local_rps, 3),
        "throughput_target": 0.8,
        "threads": args.workers,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    table = Table(
        title=f"splitmq overhead, {MODEL} fully offloaded (cut 0, raw, "
        f"{frame.nbytes:,} B), loopback"
    )
    for col in ("measure", "splitmq", "baseline", "ratio", "target"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    table.add_row(
        "p50 latency ms (vs bare paho + local ORT)",
        f"{p50_split:.2f}",
        f"{p50_bare:.2f}",
        f"{summary['latency_ratio']:.3f}",
        "≤ 1.15",
    )
    table.add_row(
        f"requests/s, {args.workers} threads (vs local ORT)",
        f"{worker_rps:.1f}",
        f"{local_rps:.1f}",
        f"{summary['throughput_ratio']:.3f}",
        "≥ 0.8",
    )
    Console().print(table)


def local_throughput(segment, frame: np.ndarray, threads: int, seconds: float) -> float:
    """Runs/s of ``threads`` threads calling the session back to back."""
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            segment.run(frame)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) / seconds


def splitmq_throughput(dev: Device, frame: np.ndarray, seconds: float) -> float:
    """Answers/s for a device that keeps its window full for ``seconds``."""
    stop = time.monotonic() + seconds
    futures = []
    while time.monotonic() < stop:
        futures.append(dev.submit(frame))  # blocks while the window is full
    for f in futures:
        f.result(timeout=30)
    return len(futures) / (time.monotonic() - stop + seconds)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--echo":
        echo_server(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
