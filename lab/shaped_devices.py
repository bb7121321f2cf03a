"""The devices of ``lab.shaped``'s rig, in its network namespace (``python -m
splitmq.lab.shaped_devices``, under ``ip netns exec``).

``--devices`` devices (``cam0``...) connect to ``--broker`` (the relay in the namespace)
and run a fixed plan (``--mode fixed``: ``--cut``/``--codec``), device-only (``local``:
``local_plan``) or follow the planner (``follow``: from device-only, ``Emulated`` at
``--speed`` of this host, telemetry each second). Each is fed ``--fps`` frames a second
(0: none; a photo for EfficientNet-Lite0, a digit for mnist-cnn). After a line
``{"ready": <unix time>}``, every ``--every`` s one JSON line per device: ``dev``, ``t``
(s since ready), ``at`` (unix time), ``up_mbit``, ``rtt_ms``, ``n`` (rate samples),
``probe_bytes`` (what its prober sent), ``answered``, ``failed``, ``plan`` (the plan in
force, in words), ``planned`` (whether the planner made it from a link estimate),
``switches`` (changes of option so far) and ``events`` (those since the last line:
``at``, ``from``, ``to``, ``by``). Until SIGTERM or ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

from splitmq.device.follow import Plans, local_plan
from splitmq.device.runtime import Device
from splitmq.lab.emulation import Emulated
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits, photos
from splitmq.shared.settings import Settings

EFFNET, MNIST = "efficientnet-lite0", "mnist-cnn"


class _Switches:
    """A device's changes of option (not republished plans), from its bounded record."""

    def __init__(self, plans: Plans) -> None:
        self.plans, self.count = plans, 0
        self.last: object = None

    def new(self) -> list[dict]:
        kept = list(self.plans.switches)
        start = next((i + 1 for i in range(len(kept) - 1, -1, -1) if kept[i] is self.last), 0)
        if kept:
            self.last = kept[-1]
        out = [
            {"at": round(s.t, 3), "to": s.new.words, "from": s.old.words, "by": s.source}
            for s in kept[start:]
            if not s.old.same_option(s.new)
        ]
        self.count += len(out)
        return out


def _feed(dev: Device, frame: Any, fps: float, stop: threading.Event, counts: dict) -> None:
    """Submit ``frame`` at ``fps`` (blocking while the window is full) until ``stop``."""

    def done(f: Any) -> None:
        counts["answered" if f.exception() is None else "failed"] += 1

    period, nxt = 1.0 / fps, time.monotonic()
    while not stop.is_set():
        try:
            dev.submit(frame).add_done_callback(done)
        except Exception:
            counts["failed"] += 1
            break
        nxt += period
        stop.wait(max(0.0, nxt - time.monotonic()))


def _row(k: int, dev: Device, t0: float, counts: dict, track: _Switches) -> dict:
    est = dev.estimates
    bps, rtt = est.uplink_bps(), est.rtt_ms()
    row = {
        "dev": k,
        "t": round(time.monotonic() - t0, 2),
        "at": round(time.time(), 3),
        "up_mbit": None if bps is None else round(bps / 1e6, 3),
        "rtt_ms": None if rtt is None else round(rtt, 1),
        "n": est.rate_samples(),
        "probe_bytes": dev.prober.sent_bytes if dev.prober else 0,
        **counts,
        "plan": dev.plan.words,
        # by the planner from a link estimate (not the starting plan, nor one made before
        # the first estimate: without alternatives, the planner replaces it at once)
        "planned": dev.plan.objective is not None and bool(dev.plan.alternatives),
    }
    events = track.new()
    row["switches"] = track.count
    return row | ({"events": events} if events else {})


def main(argv: list[str] | None = None) -> None:
    """The child: ``--devices`` devices (``cam0``...), each fed ``--fps`` frames a second
    (0: none), a JSON line each per ``--every`` s after ``{"ready": ...}``, until
    SIGTERM or ``--seconds``."""
    ap = argparse.ArgumentParser(prog="python -m splitmq.lab.shaped_devices")
    ap.add_argument("--broker", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--model", default=EFFNET)
    ap.add_argument("--mode", choices=("fixed", "local", "follow"), default="local")
    ap.add_argument("--cut", type=int, default=0)
    ap.add_argument("--codec", default="u8")
    ap.add_argument("--fps", type=float, default=0.0)
    ap.add_argument("--speed", type=float, default=0.1)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--timeout-s", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=3600.0)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mv = ModelPool(args.pool).get(args.model)
    settings = Settings(_env_file=None, broker=args.broker, pool=args.pool)
    plan = make_plan(mv, args.cut, args.codec) if args.mode == "fixed" else local_plan(mv)
    frame = mnist_digits()[0][0] if args.model == MNIST else photos(1, seed=0)[0]
    follow = args.mode == "follow"
    with ExitStack() as stack:
        devs = []
        for k in range(args.devices):
            dev = Device(
                settings,
                f"cam{k}",
                plan,
                conditions=Emulated(None, args.speed) if follow else None,
                follow=follow,
                telemetry_period_s=1.0 if follow else 5.0,
                window=args.window,
                timeout_s=args.timeout_s,
            )
            devs.append(dev.start())
            stack.callback(dev.close, False)
        stack.callback(stop.set)  # the feeders stop before the devices close
        counts = [{"answered": 0, "failed": 0} for _ in devs]
        for dev, c in zip(devs, counts, strict=True):
            if args.fps > 0:
                feeder = threading.Thread(target=_feed, args=(dev, frame, args.fps, stop, c))
                feeder.daemon = True
                feeder.start()
        tracks = [_Switches(dev.plans) for dev in devs]
        t0 = time.monotonic()
        print(json.dumps({"ready": time.time()}), flush=True)
        tick = 0
        while not stop.is_set() and time.monotonic() - t0 < args.seconds:
            tick += 1
            if stop.wait(max(0.0, t0 + tick * args.every - time.monotonic())):
                break
            for k, dev in enumerate(devs):
                print(json.dumps(_row(k, dev, t0, counts[k], tracks[k])), flush=True)


if __name__ == "__main__":
    main()
