"""The device's link estimate on a real shaped link (issue 25): what it reads, and how fast.

A broker (mosquitto, plain, on the host's end of the veth) and an edge worker (in this
process) sit on the host; ``lab.netns.ShapedWan`` makes a network namespace joined by a
veth pair with ``tc tbf rate R burst B latency 100ms`` on both ends, and a TCP relay in
the namespace adding ``--rtt-ms`` (half each way: the kernel has no netem). The device
runs in the namespace (this file again, ``--child``, under ``ip netns exec``) and
connects to the relay there, so its uplink crosses the namespace end's tbf once and its
results come back through the host end's: one shaper per direction. Every second the
child prints ``dev.estimates.uplink_bps()`` and ``rtt_ms()``; the rate is changed on
the fly with ``tc qdisc change``; each run notes the packets each tbf dropped.

Scenarios (``--scenarios``, comma-separated):

- ``steady``: per burst (``--bursts``) and rate (``--rates``), EfficientNet-Lite0 at the
  sending plan (``--cut``/``--codec``, default cut 0 ``u8``: 150,815 B) at ``--fps``,
  window 4; the median and range of the estimate over ``--seconds`` after ``--warm`` s.
- ``probe``: the same links with the device device-only (``local_plan``): only the
  prober's pairs feed the estimate.
- ``train``: the same links, measured by the proposed estimator instead (a prototype,
  ``trains``: PUBACK-timed trains, the rate of their second half); no Device.
- ``step``: 50 -> 1 -> 50 Mbit/s, ``--step-s`` each, burst 32 kB, once per
  ``--step-codecs`` (``u8``: the sending plan; ``local``: device-only, probes;
  ``train``: the prototype): the series, when the estimate crosses halfway between the
  old and new rate, and the median over the last 15 s of each phase.
- ``mnist``: mnist-cnn, cut 10, ``int8`` (553 B requests) at ``--mnist-fps``, 50 Mbit/s.

Needs root (``lab.netns.why_not``); ``ShapedWan.close`` removes the namespace, the veth
and with them the qdiscs, whatever failed.

    SPLITMQ_POOL=/tmp/q/mypool .venv/bin/python bench/bench_link.py \
        [--scenarios steady,probe,step,mnist] [--rates 1,10,50] [--bursts 32kb,4kb] \
        [--warm 10] [--seconds 20] [--step-s 20] [--step-codecs u8,local,train] \
        [--fps 4] [--mnist-fps 20] [--rtt-ms 20] [--half-ms 20] [--train-msg 16384] \
        [--json PATH]
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
from contextlib import ExitStack
from typing import Any

import numpy as np
from link_trains import trains

from splitmq.broker.launcher import Broker, free_port
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab import netns
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits, photos
from splitmq.shared.settings import Settings

EFFNET, MNIST = "efficientnet-lite0", "mnist-cnn"


def tbf_change(wan: netns.ShapedWan, rate_mbit: float, burst: str) -> None:
    """Change both ends' tbf to ``rate_mbit`` on the fly (same burst)."""
    tbf = ("root", "tbf", "rate", f"{int(rate_mbit * 1e6)}bit", "burst", burst)
    tbf += ("latency", "100ms")
    inner = ("ip", "netns", "exec", wan.ns)
    subprocess.run(["tc", "qdisc", "change", "dev", wan.veth, *tbf], check=True)
    subprocess.run([*inner, "tc", "qdisc", "change", "dev", f"{wan.veth}n", *tbf], check=True)


class Rig:
    """Broker + edge worker on the host, the shaped WAN, and a device child in the
    namespace that runs ``--child`` (see module docstring)."""

    def __init__(self, args: argparse.Namespace, rate_mbit: float, burst: str, child: list[str]):
        self.stack = ExitStack()
        try:
            netns.BURST = burst  # lab.netns's module constant: the bucket of both tbfs
            port = free_port()
            self.wan = netns.ShapedWan(port, args.rtt_ms, f"{int(rate_mbit * 1e6)}bit")
            self.stack.callback(self.wan.close)
            self.burst = burst
            self.broker = self.stack.enter_context(Broker(port=port, host=self.wan.host_side))
            settings = self.broker.settings(pool=args.pool)
            self.stack.enter_context(edge_worker(settings, "bench-edge", threads=1))
            cmd = ["ip", "netns", "exec", self.wan.ns, sys.executable, __file__, "--child"]
            cmd += ["--broker", f"{self.wan.host}:{self.wan.port}", "--pool", args.pool, *child]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self.stack.callback(self._stop_child)
        except BaseException:
            self.stack.close()
            raise

    def _stop_child(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def drops(self) -> list[int]:
        """Packets each tbf (host end, namespace end) dropped so far: a queue over its limit."""
        out = []
        for pre, dev in (
            ((), self.wan.veth),
            (("ip", "netns", "exec", self.wan.ns), f"{self.wan.veth}n"),
        ):
            text = subprocess.run(
                [*pre, "tc", "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True
            ).stdout
            word = text.split("dropped", 1)[1].split(",")[0] if "dropped" in text else "-1"
            out.append(int(word))
        return out

    def close(self) -> None:
        self.stack.close()


def feed(dev: Device, frame: np.ndarray, fps: float, stop: threading.Event, out: dict) -> None:
    """Submit ``frame`` at ``fps`` (blocking while the window is full) until ``stop``."""
    period, nxt = 1.0 / fps, time.monotonic()
    while not stop.is_set():
        try:
            fut = dev.submit(frame)
        except Exception:
            break

        def done(f: Any) -> None:
            try:
                a = f.result()
                out["answered"] += 1
                out["bytes"] = a.bytes_sent
            except Exception:
                out["failed"] += 1

        fut.add_done_callback(done)
        nxt += period
        stop.wait(max(0.0, nxt - time.monotonic()))


def child(args: argparse.Namespace) -> None:
    """In the namespace: the device, fed at ``--fps`` (0: device-only, no frames), its
    estimates printed as a JSON line a second for ``--total`` s after ``ready``."""
    mv = ModelPool(args.pool).get(args.model)
    settings = Settings(_env_file=None, broker=args.broker, pool=args.pool)
    plan = local_plan(mv) if args.codec == "local" else make_plan(mv, args.cut, args.codec)
    frame = mnist_digits()[0][0] if args.model == MNIST else photos(1, seed=0)[0]
    stop, out = threading.Event(), {"answered": 0, "failed": 0, "bytes": None}
    with Device(settings, "cam1", plan, window=4, timeout_s=10.0) as dev:
        feeder = None
        if args.codec != "local":
            feeder = threading.Thread(target=feed, args=(dev, frame, args.fps, stop, out))
            feeder.daemon = True
            feeder.start()
        t0 = time.monotonic()
        print(json.dumps({"ready": time.time()}), flush=True)
        try:
            while time.monotonic() - t0 < args.total:
                time.sleep(1.0 - (time.monotonic() - t0) % 1.0)
                bps = dev.estimates.uplink_bps()
                row = {
                    "t": round(time.monotonic() - t0, 2),
                    "up_mbit": None if bps is None else round(bps / 1e6, 3),
                    "rtt_ms": dev.estimates.rtt_ms(),
                    "n": dev.estimates.rate_samples(),
                    "probe_bytes": dev.prober.sent_bytes if dev.prober else 0,
                }
                print(json.dumps(row | out), flush=True)
        finally:
            stop.set()
            if feeder:
                feeder.join(timeout=15)


def run(rig: Rig, phases: list[tuple[float, float]]) -> tuple[list[dict], dict]:
    """Read the child's lines through ``phases`` of (rate Mbit/s, seconds), the first at
    the rig's rate (changed on the fly at each next one); rows stamped with the phase."""
    assert rig.proc.stdout is not None
    first = rig.proc.stdout.readline()
    if not first or "ready" not in first:
        raise RuntimeError("the device in the namespace did not start")
    series: list[dict] = []
    bounds, acc = [], 0.0
    for rate, seconds in phases:
        bounds.append((acc, acc + seconds, rate))
        acc += seconds
    phase = 0
    for line in rig.proc.stdout:
        row = json.loads(line)
        if row["t"] > acc + 0.5:
            break
        start, end, rate = bounds[phase]
        series.append(row | {"phase": phase, "rate": rate, "into": round(row["t"] - start, 1)})
        if phase + 1 < len(bounds) and row["t"] >= end - 0.5:
            phase += 1
            tbf_change(rig.wan, bounds[phase][2], rig.burst)
    last = series[-1] if series else {}
    fed = {k: last.get(k) for k in ("answered", "failed", "bytes")}
    return series, fed | {"drops_host_ns": rig.drops()}


def summary(rows: list[dict]) -> dict:
    ups = [r["up_mbit"] for r in rows if r["up_mbit"] is not None]
    rtts = [r["rtt_ms"] for r in rows if r["rtt_ms"] is not None]
    if not ups:
        return {"median": None, "lo": None, "hi": None, "rtt": None}
    return {
        "median": round(statistics.median(ups), 2),
        "lo": round(min(ups), 2),
        "hi": round(max(ups), 2),
        "rtt": round(statistics.median(rtts), 1) if rtts else None,
    }


def child_args(
    args: argparse.Namespace, model: str, cut: int, codec: str, fps: float, total: float
) -> list[str]:
    return [
        "--half-ms",
        str(args.half_ms),
        "--train-msg",
        str(args.train_msg),
        "--model",
        model,
        "--cut",
        str(cut),
        "--codec",
        codec,
        "--fps",
        str(fps),
        "--total",
        str(total),
    ]


def steady(args: argparse.Namespace, probe: bool | str) -> list[dict]:
    out = []
    for burst in args.bursts.split(","):
        for rate in [float(r) for r in args.rates.split(",")]:
            total = args.warm + args.seconds
            codec = {True: "local", False: args.codec, "train": "train"}[probe]
            rig = Rig(args, rate, burst, child_args(args, EFFNET, args.cut, codec, args.fps, total))
            try:
                series, fed = run(rig, [(rate, total)])
            finally:
                rig.close()
            rows = [r for r in series if r["into"] > args.warm]
            s = summary(rows)
            share = None
            if len(rows) > 1:  # probe bytes/s over the measured part, of the rate
                dt = rows[-1]["t"] - rows[0]["t"]
                db = rows[-1]["probe_bytes"] - rows[0]["probe_bytes"]
                share = round(100 * db * 8 / dt / (rate * 1e6), 2) if dt else None
            name = {True: "probe", False: "steady", "train": "train"}[probe]
            rec = {"scenario": name, "rate": rate, "burst": burst}
            rec |= s | {"err_pct": pct(s["median"], rate), "probe_share_pct": share} | fed
            if probe == "train":
                whole = [r["whole_mbit"] for r in rows if r.get("whole_mbit") is not None]
                ms = [r["train_ms"] for r in rows if r.get("train_ms") is not None]
                rec["whole_train_median"] = statistics.median(whole) if whole else None
                rec["train_ms_median"] = statistics.median(ms) if ms else None
                rec["train_bytes"] = rows[-1].get("train_bytes") if rows else None
            print(json.dumps(rec), flush=True)
            out.append(rec | {"series": series})
    return out


def pct(est: float | None, rate: float) -> float | None:
    return None if est is None else round(100 * (est - rate) / rate, 1)


def step(args: argparse.Namespace) -> list[dict]:
    hi, lo, out = 50.0, 1.0, []
    for codec in args.step_codecs.split(","):
        phases = [(hi, args.step_s), (lo, args.step_s), (hi, args.step_s)]
        total = 3 * args.step_s
        rig = Rig(args, hi, "32kb", child_args(args, EFFNET, args.cut, codec, args.fps, total))
        try:
            series, fed = run(rig, phases)
        finally:
            rig.close()
        half = (hi + lo) / 2
        rec: dict[str, Any] = {"scenario": "step", "codec": codec, "burst": "32kb"}
        for i, below in ((1, True), (2, False)):
            rows = [r for r in series if r["phase"] == i and r["up_mbit"] is not None]
            rec[f"halfway_s_{i}"] = next(
                (r["into"] for r in rows if (r["up_mbit"] < half) == below), None
            )
        for i in range(3):  # the last 15 s of each phase, as the "Done when"
            rows = [r for r in series if r["phase"] == i and r["into"] > args.step_s - 15]
            rec[f"phase{i}"] = summary(rows) | {"rate": phases[i][0]}
        rec |= fed
        print(json.dumps(rec), flush=True)
        for r in series:
            up, rtt = r["up_mbit"], r["rtt_ms"]
            print(f"  t={r['t']:5.1f} rate={r['rate']:4.0f} up={up} rtt={rtt} n={r['n']}")
        out.append(rec | {"series": series})
    return out


def mnist(args: argparse.Namespace) -> list[dict]:
    rate, total = 50.0, args.warm + args.seconds
    rig = Rig(args, rate, "32kb", child_args(args, MNIST, 10, "int8", args.mnist_fps, total))
    try:
        series, fed = run(rig, [(rate, total)])
    finally:
        rig.close()
    s = summary([r for r in series if r["into"] > args.warm])
    rec = {"scenario": "mnist", "rate": rate, "burst": "32kb"} | s
    rec |= {"err_pct": pct(s["median"], rate)} | fed
    print(json.dumps(rec), flush=True)
    print("  up:", [r["up_mbit"] for r in series])
    return [rec | {"series": series}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="steady,probe,step,mnist")
    ap.add_argument("--rates", default="1,10,50")
    ap.add_argument("--bursts", default="32kb,4kb")
    ap.add_argument("--warm", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--step-s", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--mnist-fps", type=float, default=20.0)
    ap.add_argument("--cut", type=int, default=0)
    ap.add_argument("--codec", default="u8")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--pool", default=os.environ.get("SPLITMQ_POOL", ".pool"))
    ap.add_argument("--step-codecs", default="u8,local,train")
    ap.add_argument("--half-ms", type=float, default=20.0, help="train: second half's length")
    ap.add_argument("--train-msg", type=int, default=16384, help="train: bytes per message")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=EFFNET, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=float, default=30.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        (trains if args.codec == "train" else child)(args)
        return
    if (why := netns.why_not()) is not None:
        sys.exit(f"cannot shape a link here: {why}")
    results: list[dict] = []
    for name in args.scenarios.split(","):
        if name == "steady":
            results += steady(args, probe=False)
        elif name == "probe":
            results += steady(args, probe=True)
        elif name == "train":
            results += steady(args, probe="train")
        elif name == "step":
            results += step(args)
        elif name == "mnist":
            results += mnist(args)
        else:
            sys.exit(f"unknown scenario {name!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
