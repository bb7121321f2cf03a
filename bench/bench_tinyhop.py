"""The tiny hop: what splitmq costs per message when the hop's compute is almost nothing.

MNIST CNN cut late (cut 10, int8: the edge runs only the two fc layers), one
pipelined device (window 32) and one `splitmq edge` worker (one thread, its own
process), against a bare paho pipelined request/response of the same sizes,
QoS and broker doing the same ONNX Runtime work and nothing else: a client that
runs the head (cuts 0-10) and publishes, keeping 32 requests in flight, to an
echo process that runs the tail (10-12) and replies with as many bytes as
splitmq's result. What splitmq adds over that is its protocol: encoding, the
request's header and checks, routing, the JSON result, retries and telemetry.
The two run in alternating turns of ``--seconds`` each, so machine noise hits
both alike; the ratio is of the medians of the turns. Target: ≥ 0.8.

    .venv/bin/python bench/bench_tinyhop.py [--turns 5] [--seconds 4] [--json F]
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
from socket import IPPROTO_TCP, TCP_NODELAY

import paho.mqtt.client as paho
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

MODEL, CUT, CODEC, WINDOW = "mnist-cnn", 10, "int8", 32


def bare_client(settings: Settings, name: str, topic: str, on_message) -> paho.Client:
    """A plain paho MQTT v5 client, its network loop running, subscribed to ``topic``."""
    url = settings.broker_url
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    # no Nagle, as splitmq's client: paho leaves it on, which costs ~40 ms a small reply
    client.on_connect = lambda c, *_: c.socket().setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    client.on_message = on_message
    client.connect(url.host, url.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise RuntimeError(f"no SUBACK for {topic}")
    return client


class BarePipeline:
    """A bare paho client keeping ``window`` QoS 1 requests in flight to an echo process."""

    def __init__(self, settings: Settings, reply_bytes: int, window: int, head) -> None:
        self.head = head  # the device's compute: the same segment splitmq's device runs
        self.req, self.rsp = f"bench/{uuid.uuid4().hex}/req", f"bench/{uuid.uuid4().hex}/rsp"
        echo = ["--echo", settings.broker, str(settings.pool), self.req, self.rsp]
        self.server = subprocess.Popen(
            [sys.executable, __file__, *echo, str(reply_bytes)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout and self.server.stdout.readline().strip() == "ready"
        self.window, self.out = window, 0
        self.room = threading.Condition()
        self.client = bare_client(settings, f"bare-{uuid.uuid4().hex[:6]}", self.rsp, self._reply)

    def _reply(self, *_: object) -> None:
        with self.room:
            self.out -= 1
            self.room.notify_all()

    def run(self, frame, payload: bytes, seconds: float) -> float:
        """Answers/s while keeping the window full for ``seconds``, then every one answered."""
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            with self.room:
                self.room.wait_for(lambda: self.out < self.window)
                self.out += 1
            self.head.run(frame)
            self.client.publish(self.req, payload, qos=1)
            sent += 1
        with self.room:
            self.room.wait_for(lambda: self.out == 0, 30)
        return sent / (time.monotonic() - start)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.server.terminate()
        self.server.wait(10)


def echo_server(broker: str, pool: str, req: str, rsp: str, reply_bytes: int) -> None:
    """The bare responder, in its own process like a worker: runs the tail, replies."""
    cfg = Settings(_env_file=None, broker=broker)
    reply = os.urandom(reply_bytes)
    mv = ModelPool(Path(pool)).get(MODEL)
    sessions = SessionCache(ModelPool(Path(pool)))
    head, tail = sessions.segment(mv, 0, CUT), sessions.segment(mv, CUT, mv.last_cut)
    x = head.run(mv.graph.sample_input())[mv.cuts[CUT].name]

    def answer(client: paho.Client, *_: object) -> None:
        tail.run(x)
        client.publish(rsp, reply, qos=1)

    bare_client(cfg, f"bare-echo-{uuid.uuid4().hex[:6]}", req, answer)
    print("ready", flush=True)
    threading.Event().wait()


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
        try:
            with Device(cfg, "bench-dev", make_plan(mv, CUT, CODEC), window=WINDOW) as dev:
                request_bytes = dev.infer(frame).bytes_sent
                result_bytes = result_size(cfg, dev, frame)
                head = SessionCache(ModelPool(pool_dir)).segment(mv, 0, CUT)
                bare = BarePipeline(cfg, result_bytes, WINDOW, head)
                try:
                    ours, theirs = turns(args, dev, frame, worker.pid, bare, request_bytes)
                finally:
                    bare.close()
        finally:
            worker.terminate()
            worker.wait(30)
    report(args, request_bytes, result_bytes, ours, theirs)


def turns(args, dev: Device, frame, worker: int, bare: BarePipeline, request_bytes: int):
    """The alternating turns: (req/s, CPU µs/req here, in the server) of each side."""
    payload = os.urandom(request_bytes)
    splitmq_rps(dev, frame, 1.0)  # warm both up
    bare.run(frame, payload, 1.0)
    ours, theirs = [], []
    for _ in range(args.turns):
        ours.append(measured(lambda s: splitmq_rps(dev, frame, s), worker, args.seconds))
        bare_turn = measured(lambda s: bare.run(frame, payload, s), bare.server.pid, args.seconds)
        theirs.append(bare_turn)
    return ours, theirs


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


def report(args, request_bytes: int, result_bytes: int, ours: list, theirs: list) -> None:
    def med(turns: list, i: int) -> float:
        return statistics.median(t[i] for t in turns)

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
        "splitmq_cpu_us": {"device": round(med(ours, 1)), "worker": round(med(ours, 2))},
        "bare_cpu_us": {"client": round(med(theirs, 1)), "echo": round(med(theirs, 2))},
        "ratio": round(med(ours, 0) / med(theirs, 0), 3),
        "target": 0.8,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    table = Table(title=f"Tiny hop: {MODEL} cut {CUT} {CODEC}, window {WINDOW}, one edge thread")
    for col in ("", "median req/s", "turns", "CPU µs/req: device", "server"):
        table.add_column(col)
    for name, turns in (("splitmq", ours), ("bare paho", theirs)):
        rps = " ".join(f"{t[0]:.0f}" for t in turns)
        table.add_row(
            name, f"{med(turns, 0):.0f}", rps, f"{med(turns, 1):.0f}", f"{med(turns, 2):.0f}"
        )
    table.add_row("ratio", f"{summary['ratio']:.3f}", "target ≥ 0.8")
    Console().print(table)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--echo":
        echo_server(*sys.argv[2:6], int(sys.argv[6]))
    else:
        main()
