"""The proposed link estimator of issue 25, a prototype for ``bench_link.py``'s ``train``.

PUBACK-timed trains: messages published back to back, each acknowledgement timed on the
device's clock, the rate read from the train's second half, after a token bucket's burst
has drained. Not splitmq's estimator (``shared/transport/estimates.py``): what it measured
against it is in docs/benchmarks.md, "The link estimate on a shaped link".
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

#: The burst a train must outlast, its period, its longest length.
TRAIN_BURST, TRAIN_PERIOD_S, TRAIN_MAX = 32768, 1.0, 1 << 20


def _ack_timer(acks: list[float], left: list[int], done: threading.Event) -> Any:
    """``on_ack(i)``: a PUBACK listener that stamps message ``i``'s acknowledgement."""

    def on_ack(i: int) -> Any:
        def heard(code: int, reason: str) -> None:
            acks[i] = time.monotonic()
            left[0] -= 1
            if not left[0]:
                done.set()

        return heard

    return on_ack


def trains(args: argparse.Namespace) -> None:
    """In the namespace: the proposed estimator, a prototype. Every ``TRAIN_PERIOD_S`` a
    train of ``--train-msg``-byte QoS 1 messages, ``max(2 x TRAIN_BURST, 2 x --half-ms of
    the estimate)`` in all, is published back to back (twice as long again while its
    second half lasts under half of ``--half-ms``: it was inside a burst); each PUBACK is
    timed on the device's clock. The rate of the second half (bytes acknowledged after the
    middle message over the time from its PUBACK to the last) is the sample; the whole
    train's rate is printed beside it, to show what the bucket adds. The estimate is the
    median of the last 3."""
    client = MqttClient(Settings(_env_file=None, broker=args.broker).connection("train"))
    client.connect()
    samples: list[float] = []
    t0 = time.monotonic()
    print(json.dumps({"ready": time.time()}), flush=True)
    sent, scale = 0, 1
    try:
        while time.monotonic() - t0 < args.total:
            est = statistics.median(samples[-3:]) if samples else None
            total = max(2 * TRAIN_BURST, int(2 * (est or 0) * args.half_ms / 8000))
            total = min(TRAIN_MAX, total * scale)
            count = -(-total // args.train_msg)
            acks: list[float] = [0.0] * count
            done = threading.Event()
            left = [count]

            on_ack = _ack_timer(acks, left, done)
            start = time.monotonic()
            for i in range(count):
                client.publish("probe/train", bytes(args.train_msg), qos=1, on_ack=on_ack(i))
            done.wait(10)
            sent += count * args.train_msg
            mid = count // 2
            row: dict[str, Any] = {"train_bytes": count * args.train_msg}
            if left[0] == 0 and acks[-1] - acks[mid] < args.half_ms / 2000:
                scale = min(64, 2 * scale)  # too short to time (inside a burst): longer
                row["short"] = True
            elif left[0] == 0:
                scale = 1
                second = (count - 1 - mid) * args.train_msg * 8 / (acks[-1] - acks[mid])
                whole = (count - 1) * args.train_msg * 8 / (acks[-1] - acks[0])
                samples.append(second)
                row |= {"second_mbit": round(second / 1e6, 3), "whole_mbit": round(whole / 1e6, 3)}
                row["train_ms"] = round(1000 * (acks[-1] - start), 1)
            est = statistics.median(samples[-3:]) if samples else None
            row |= {"t": round(time.monotonic() - t0, 2), "probe_bytes": sent}
            row |= {"up_mbit": None if est is None else round(est / 1e6, 3), "rtt_ms": None, "n": 0}
            print(json.dumps(row), flush=True)
            time.sleep(max(0.0, TRAIN_PERIOD_S - (time.monotonic() - start)))
    finally:
        client.close()
