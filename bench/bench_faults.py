"""Faults during a stream of requests, every role in its own process, as deployed.

`splitmq broker`, two `splitmq edge` workers (one inference thread each), a
`splitmq cloud` worker and four `splitmq device --json` processes streaming
MNIST digits through a fixed split (cut 4, int8, to the edge; with
``--cloud-cut 7`` in the cloud fault, so every request escalates). At
``FAULT_AT_S`` one fault strikes:

- ``kill-edge``: kill -9 of one of the two edge workers;
- ``stop-edge``: SIGSTOP of one of them for 20 s, then SIGCONT;
- ``broker``: kill -9 of the broker (splitmq broker and its mosquitto), a new
  one on the same port and data directory 3 s later;
- ``cloud``: kill -9 of the cloud worker, restarted 10 s later;
- ``overload``: no fault, but 16 devices with window 64 against one edge worker.

The devices are stopped with SIGTERM at the end and print their summary lines;
each answer line is timestamped as it is read. Reported per fault: requests,
answered, failed visibly, silently lost, answered after failing, retries, the
longest gap between answers (any device), the first answer after the fault,
p95, and the most dropped messages the broker counted (``$SYS``, every 10 s).

    SPLITMQ_POOL=.pool .venv/bin/python bench/bench_faults.py [--seconds 40] [--only cloud] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import start_worker
from rich.console import Console
from rich.table import Table

from splitmq.broker.launcher import free_port
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

FAULT_AT_S = 8.0
FAULTS = ("kill-edge", "stop-edge", "broker", "cloud", "overload")
DROPPED = "$SYS/broker/publish/messages/dropped"


def _env(cfg: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "SPLITMQ_BROKER": cfg.broker,
        "SPLITMQ_POOL": str(cfg.pool),
        "SPLITMQ_TOPIC_PREFIX": cfg.topic_prefix,
    }


def start_broker(port: int, data: Path) -> subprocess.Popen:
    """`splitmq broker` in a process group of its own (kill -9 takes mosquitto too)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitmq", "broker", "--port", str(port), "--data-dir", str(data)],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with MqttClient.at("127.0.0.1", port).connect(timeout=1):
                return proc
        except Exception:  # not accepting yet
            time.sleep(0.1)
    raise RuntimeError("the broker did not start")


@dataclass
class DeviceRun:
    """One `splitmq device --json` process; its answer times and its summary."""

    proc: subprocess.Popen
    answers: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    summary: dict | None = None

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            row = json.loads(line)
            if row.get("summary"):
                self.summary = row
            elif "error" in row:
                self.errors[":".join(row["error"].split(":")[1:3]).strip()[:80]] += 1
            else:
                self.answers.append(time.monotonic())


def start_device(
    cfg: Settings, i: int, window: int, cloud: bool, fps: float | None = None
) -> DeviceRun:
    """`splitmq device --json` streaming digits through cut 4 int8 until SIGTERM."""
    args = ["--model", "mnist-cnn", "--cut", "4", "--codec", "int8", "--window", str(window)]
    args += ["--cloud-cut", "7"] if cloud else []
    args += ["--fps", str(fps)] if fps else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitmq", "device", *args, "--id", f"dev{i}", "--json"],
        env=_env(cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    run = DeviceRun(proc)
    threading.Thread(target=run.read, daemon=True).start()
    return run


class BenchBroker:
    """`splitmq broker` on a free port with a data dir of its own, and a watch on its
    ``$SYS`` count of dropped messages (the most it reported)."""

    def __init__(self, pool: Path) -> None:
        self.port, self.data = free_port(), Path(tempfile.mkdtemp(prefix="bench-broker-"))
        self.cfg = Settings(
            _env_file=None,
            broker=f"127.0.0.1:{self.port}",
            pool=pool,
            topic_prefix="bench/splitmq/v1",
        )
        self.proc = start_broker(self.port, self.data)
        self.dropped = 0
        self.watch = MqttClient(self.cfg.connection("bench-watch"))
        self.watch.subscribe(DROPPED, self._dropped)
        self.watch.connect()

    def _dropped(self, msg) -> None:
        self.dropped = max(self.dropped, int(msg.payload))

    def stop(self) -> None:
        self.watch.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def run_fault(fault: str, pool: Path, seconds: float) -> dict:
    stack = BenchBroker(pool)
    cfg, port, data, broker = stack.cfg, stack.port, stack.data, stack.proc
    edges = [start_worker(cfg, 1, "edge", "edge-a")]
    if fault != "overload":
        edges.append(start_worker(cfg, 1, "edge", "edge-b"))
    cloud = start_worker(cfg, 1, "cloud", "cloud-a")
    many = fault == "overload"
    devices = [
        start_device(cfg, i, 64 if many else 8, fault == "cloud") for i in range(16 if many else 4)
    ]
    time.sleep(FAULT_AT_S)  # the stream runs; the fault strikes now
    t_fault = time.monotonic()
    if fault == "kill-edge":
        edges[0].kill()
    elif fault == "stop-edge":
        edges[0].send_signal(signal.SIGSTOP)
        time.sleep(20)
        edges[0].send_signal(signal.SIGCONT)
    elif fault == "broker":
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait()
        time.sleep(3)
        broker = start_broker(port, data)
    elif fault == "cloud":
        cloud.kill()
        cloud.wait()
        time.sleep(10)
        cloud = start_worker(cfg, 1, "cloud", "cloud-a")
    time.sleep(max(0.0, seconds - (time.monotonic() - t_fault) - FAULT_AT_S))
    for d in devices:
        d.proc.send_signal(signal.SIGTERM)
    for d in devices:
        d.proc.wait(timeout=120)
    time.sleep(0.5)  # the reader threads finish the pipes
    for p in [*edges, cloud]:
        p.send_signal(signal.SIGCONT)
        p.terminate()
        p.wait(timeout=30)
    stack.proc = broker
    stack.stop()
    return _measure(fault, devices, t_fault, stack.dropped)


def _measure(fault: str, devices: list[DeviceRun], t_fault: float, dropped: int) -> dict:
    sums = [d.summary or {} for d in devices]
    times = sorted(t for d in devices for t in d.answers)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    widest = max(range(len(gaps)), key=gaps.__getitem__, default=None)
    after = [t for t in times if t > t_fault]
    total = sum(s.get("frames", 0) for s in sums)
    return {
        "fault": fault,
        "requests": total,
        "answered": sum(s.get("answered", 0) for s in sums),
        "failed": sum(s.get("failed", 0) for s in sums),
        "lost": sum(s.get("lost", 0) for s in sums) + sum(d.summary is None for d in devices),
        "answered_after_failure": sum(s.get("answered_after_failure", 0) for s in sums),
        "retries": sum(s.get("retries", 0) for s in sums),
        "retries_pct": round(100 * sum(s.get("retries", 0) for s in sums) / max(total, 1), 2),
        "longest_gap_s": round(max(gaps, default=0.0), 2),
        # when it began, in seconds after the fault struck (negative: before it)
        "longest_gap_at_s": None if widest is None else round(times[widest] - t_fault, 2),
        "first_answer_after_fault_s": round(after[0] - t_fault, 2) if after else None,
        "p95_ms": max((s["p95_ms"] for s in sums if s.get("p95_ms")), default=None),
        "broker_dropped": dropped,
        "errors": dict(sum((d.errors for d in devices), Counter())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--only", choices=FAULTS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = Path(os.environ.get("SPLITMQ_POOL") or Path(__file__).parent.parent / ".pool")
    rows = [run_fault(f, pool, args.seconds) for f in ([args.only] if args.only else FAULTS)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"faults at t = {FAULT_AT_S:g} s of {args.seconds:g} s")
    for key in rows[0]:
        table.add_column(key.replace("_", " "))
    for r in rows:
        table.add_row(*("-" if v is None else str(v) for v in r.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
