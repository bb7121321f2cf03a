"""Soak: many devices for many minutes; does any process grow?

`splitmq broker`, two `splitmq edge` workers and ``--devices`` `splitmq device
--json` processes (MNIST digits through cut 4 int8, ``--fps`` each, no
``--frames``: they run until stopped), every role in its own process. The
resident memory (VmRSS) of mosquitto, the workers and the devices is sampled
every ``--every`` seconds; after ``--warmup`` minutes, the slope of a
least-squares line through each process's samples is reported in MB/min,
with the devices' summary lines (stopped by SIGTERM) and the broker's dropped
messages. Target: every slope < 1 MB/min, 0 lost, 0 dropped.

    SPLITMQ_POOL=.pool .venv/bin/python bench/bench_soak.py [--devices 50] [--minutes 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from bench_faults import BenchBroker, start_device
from harness import start_worker
from rich.console import Console
from rich.table import Table


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def slope_mb_per_min(samples: list[tuple[float, float]], warmup_s: float) -> float | None:
    late = [(t, m) for t, m in samples if t >= warmup_s]
    if len(late) < 3:
        return None
    t, m = np.array(late).T
    return round(float(np.polyfit(t / 60, m, 1)[0]), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = Path(os.environ.get("SPLITMQ_POOL") or Path(__file__).parent.parent / ".pool")
    stack = BenchBroker(pool)
    cfg = stack.cfg
    edges = [start_worker(cfg, 1, "edge", f"edge-{i}") for i in range(2)]
    devices = [start_device(cfg, i, 4, False, fps=args.fps) for i in range(args.devices)]
    procs = {"mosquitto": children(stack.proc.pid)[0]} | {
        f"edge-{i}": p.pid for i, p in enumerate(edges)
    }
    procs |= {f"dev{i}": d.proc.pid for i, d in enumerate(devices)}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
    t0 = time.monotonic()
    while (now := time.monotonic() - t0) < args.minutes * 60:
        for name, pid in procs.items():
            if (mb := rss_mb(pid)) is not None:
                samples[name].append((now, mb))
        time.sleep(args.every)  # the sampling period, not a synchronisation
    for d in devices:
        d.proc.send_signal(signal.SIGTERM)
    for d in devices:
        d.proc.wait(timeout=120)
    time.sleep(0.5)  # the reader threads finish the pipes
    for p in edges:
        p.terminate()
        p.wait(timeout=30)
    stack.stop()
    slopes = {name: slope_mb_per_min(s, args.warmup * 60) for name, s in samples.items()}
    device_slopes = [v for k, v in slopes.items() if k.startswith("dev") and v is not None]
    sums = [d.summary or {} for d in devices]
    report = {
        "devices": args.devices,
        "minutes": args.minutes,
        "requests": sum(s.get("frames", 0) for s in sums),
        "answered": sum(s.get("answered", 0) for s in sums),
        "failed": sum(s.get("failed", 0) for s in sums),
        "lost": sum(s.get("lost", 0) for s in sums) + sum(d.summary is None for d in devices),
        "broker_dropped": stack.dropped,
        "slope_mb_per_min": {
            "mosquitto": slopes["mosquitto"],
            **{k: v for k, v in slopes.items() if k.startswith("edge")},
            "devices_max": max(device_slopes, default=None),
            "devices_median": float(np.median(device_slopes)) if device_slopes else None,
        },
        "rss_mb_end": {
            k: round(s[-1][1], 1) for k, s in samples.items() if s and not k.startswith("dev")
        }
        | {
            "device_max": round(
                max(s[-1][1] for k, s in samples.items() if s and k.startswith("dev")), 1
            )
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"soak: {args.devices} devices, {args.minutes:g} min")
    table.add_column("what")
    table.add_column("value")
    for k, v in report.items():
        table.add_row(k, json.dumps(v))
    Console().print(table)


if __name__ == "__main__":
    main()
