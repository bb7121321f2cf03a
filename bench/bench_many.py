"""Many devices, one edge worker: requests/s answered and p95, with and without batching.

A load generator plays N devices (1-64), each keeping one request in flight
(the next frame leaves when the last answer came: a closed loop, like
Triton's perf_analyzer at concurrency N). Every device sends the whole model's
input to the edge (cut 0, ``u8``), so the worker runs the whole model per
request: the MNIST CNN (about 0.2 ms) and EfficientNet-Lite0 (about 10 ms).
One `splitmq edge` process (``--threads`` inference threads, default 1) per
configuration serves them: without batching (``--max-batch 1``), batching what
is queued (``--max-batch 8``) and waiting up to 2 ms for a batch to fill
(``--max-queue-delay 2ms``). All three run at once on topics of their own and
are measured in alternating order per N. The generator is one plain
MQTT client publishing for every device id, so it costs the host far less
than N devices would.

``--curve`` also measures ONNX Runtime alone: per-sample time of a batch of
1-32 against batch 1, one thread, for both models: what batching can gain
on this CPU at most.

    .venv/bin/python bench/bench_many.py [--devices 1,4,16,64] [--seconds 5] [--curve] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from harness import bench_settings
from rich.console import Console
from rich.table import Table

from splitmq.broker.launcher import Broker
from splitmq.lab.spawn import spawn
from splitmq.shared.codecs import encode
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import model_input
from splitmq.shared.offline.datasets import mnist_digits, photos
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.protocol.topics import ANY
from splitmq.shared.protocol.wire import (
    CONTENT_TYPE_REQUEST,
    DeviceTiming,
    Hop,
    Request,
    Timing,
    pack_request,
)
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

MODELS = ("mnist-cnn", "efficientnet-lite0")
CONFIGS = {
    "no batching": ["--max-batch", "1"],
    "batch 8": ["--max-batch", "8", "--max-queue-delay", "2ms"],
    "batch 8, no wait": ["--max-batch", "8", "--max-queue-delay", "0"],
}


def frame_of(mv: ModelVersion) -> np.ndarray:
    if mv.name.startswith("mnist"):
        return mnist_digits()[0][0]
    return photos(1, seed=0)[0]


class Crowd:
    """``n`` devices in one client, each with one request in flight (closed loop)."""

    def __init__(self, cfg: Settings, mv: ModelVersion, frame: np.ndarray) -> None:
        self.cfg, self.mv = cfg, mv
        self.tensor = encode(model_input(frame, mv, pixels=True), "u8")
        self.client = MqttClient(cfg.connection(f"crowd-{uuid.uuid4().hex[:6]}")).connect()
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.failed = 0
        self.running = False
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        anyone = cfg.topics.filters()
        self.client.subscribe(anyone.result(ANY), self._answer, qos=1)
        self.client.subscribe(anyone.error(ANY), self._error, qos=1)

    def _send(self, device: str) -> None:
        now = time.time()
        request = Request(
            id=uuid.uuid4().hex,
            device=device,
            model=self.mv.name,
            version=self.mv.version,
            cut=0,
            route=(Hop("edge"),),
            hop=0,
            tensor=self.tensor,
            deadline=now + 30,
            timing=Timing(DeviceTiming(now, now, now, now)),
        )
        with self.lock:
            self.sent[request.id] = time.perf_counter()
        self.client.publish(
            self.cfg.topics.request("edge", self.mv.name, 0, device),
            pack_request(request),
            qos=1,
            correlation_data=request.id.encode(),
            content_type=CONTENT_TYPE_REQUEST,
        )

    def _answer(self, msg) -> None:
        result = unpack_result(msg.payload)
        self._ended(result.id, result.device, ok=True)

    def _error(self, msg) -> None:
        self._ended(msg.correlation_id() or "", msg.topic.rsplit("/", 1)[-1], ok=False)

    def _ended(self, request_id: str, device: str, ok: bool) -> None:
        with self.lock:
            t0 = self.sent.pop(request_id, None)
            if t0 is None:
                return
            if ok:
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.failed += 1
            again = self.running
            self.idle.notify_all()
        if again:
            self._send(device)

    def run(self, n: int, seconds: float) -> dict[str, float]:
        """Requests/s and latency percentiles of ``n`` devices for ``seconds``."""
        with self.lock:
            self.latencies, self.failed, self.running = [], 0, True
        start = time.perf_counter()
        for i in range(n):
            self._send(f"crowd-{i}")
        time.sleep(seconds)  # the load runs on the client's network thread meanwhile
        with self.lock:
            self.running = False
            done = list(self.latencies)
            elapsed = time.perf_counter() - start  # what was answered by now, in this time
            self.idle.wait_for(lambda: not self.sent, 60)  # the rest lands before the next run
        ms = sorted(x * 1000 for x in done)
        return {
            "rps": len(done) / elapsed,
            "p50_ms": statistics.median(ms),
            "p95_ms": ms[int(0.95 * (len(ms) - 1))],
            "failed": self.failed,
        }

    def close(self) -> None:
        self.client.close()


def serve(cfg: Settings, threads: int, args: list[str]):
    (proc,) = spawn(
        cfg,
        "edge",
        [f"many-{uuid.uuid4().hex[:6]}"],
        ["--workers", str(threads), *args],
        quiet=True,
    )
    return proc


def stopped(proc) -> None:
    proc.terminate()
    proc.wait(30)


def curve(pool: Path, sizes=(1, 2, 4, 8, 16, 32), seconds: float = 1.5) -> dict:
    """Per-sample ms of a batch of each size, one ONNX Runtime thread, per model."""
    cache, out = SessionCache(ModelPool(pool)), {}
    for name in MODELS:
        mv = ModelPool(pool).get(name)
        seg = cache.segment(mv, 0, mv.last_cut)
        x = model_input(frame_of(mv), mv)
        row = {}
        for b in sizes:
            xs = np.repeat(x, b, axis=0)
            seg.run(xs)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                seg.run(xs)
                n += 1
            row[b] = (time.perf_counter() - start) / (n * b) * 1000
        out[name] = {
            "per_sample_ms": {b: round(v, 4) for b, v in row.items()},
            "speedup": {b: round(row[1] / v, 3) for b, v in row.items()},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,4,16,64", help="comma-separated device counts")
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--threads", type=int, default=1, help="the edge worker's threads")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--curve", action="store_true", help="also ONNX Runtime's batch curve")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    pool = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    counts = [int(n) for n in args.devices.split(",")]
    rows: list[dict] = []
    with Broker() as broker:
        for name in args.models.split(","):
            mv = ModelPool(pool).get(name)
            with contextlib.ExitStack() as stack:  # every worker stopped, whatever fails
                crowds = {}
                for config, flags in CONFIGS.items():  # each its own topics, all up at once
                    cfg = bench_settings(broker, pool)
                    stack.callback(stopped, serve(cfg, args.threads, flags))
                    crowds[config] = Crowd(cfg, mv, frame_of(mv))
                    stack.callback(crowds[config].close)
                for crowd in crowds.values():
                    crowd.run(2, 1.0)  # warm up
                for i, n in enumerate(counts):
                    order = list(crowds) if i % 2 == 0 else list(reversed(crowds))
                    for config in order:
                        got = crowds[config].run(n, args.seconds)
                        rows.append({"model": name, "devices": n, "config": config, **got})
    summary = {"threads": args.threads, "seconds": args.seconds, "rows": rows}
    if args.curve:
        summary["ort_curve"] = curve(pool)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    report(summary)


def report(summary: dict) -> None:
    table = Table(title=f"One edge worker ({summary['threads']} thread), N devices, cut 0 u8")
    for col in ("model", "devices", "config", "req/s", "p50 ms", "p95 ms", "failed", "× unbatched"):
        table.add_column(col, justify="left" if col in ("model", "config") else "right")
    plain = {
        (r["model"], r["devices"]): r["rps"]
        for r in summary["rows"]
        if r["config"] == "no batching"
    }
    for r in summary["rows"]:
        gain = r["rps"] / plain[(r["model"], r["devices"])]
        table.add_row(
            r["model"],
            str(r["devices"]),
            r["config"],
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            str(r["failed"]),
            f"{gain:.2f}",
        )
    Console().print(table)
    for name, c in summary.get("ort_curve", {}).items():
        print(name, "ONNX Runtime per-sample speedup by batch:", c["speedup"])


if __name__ == "__main__":
    main()
