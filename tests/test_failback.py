"""Fail-back: a device moved off a tier that went away returns to it once it is back,
within the planner's dwell, as the planner's own choice for its conditions says."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from kit import eventually

from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.units import Link

pytestmark = pytest.mark.slow

MODEL = "mnist-cnn"
DWELL_S = 3.0


def test_a_device_returns_to_the_edge_once_it_restarted(settings, real_pool: ModelPool) -> None:
    """The cloud sits behind a slow WAN, so a slow device on a fast link prefers the edge;
    the edge stops, the device goes to the cloud (or home), the edge comes back, and the
    device is on it again within the dwell and a few planning periods."""
    mv = real_pool.get(MODEL)
    cfg = settings.model_copy(update={"pool": real_pool.root})
    digits = mnist_digits()[0][:50]
    futures: list[Future] = []
    stop = threading.Event()
    planner = PlannerService(
        cfg,
        "fb-planner",
        control=Control(dwell_s=DWELL_S),
        links={"cloud": Link.parse("5mbit/60ms")},
        period_s=0.5,
        min_gap_s=0.1,
    )
    with (
        Worker(cfg, "cloud", "fb-cloud"),
        planner,
        Device(
            cfg,
            "fb-dev",
            local_plan(mv),
            conditions=Emulated(Link.parse("100mbit/2ms"), 0.005),
            follow=True,
            telemetry_period_s=0.5,
            window=2,
            timeout_s=2.0,
        ) as dev,
    ):

        def stream() -> None:
            while not stop.is_set():
                futures.append(dev.submit(digits[len(futures) % len(digits)]))

        def on_edge() -> bool:
            return dev.plan.tiers[:1] == ("edge",)

        streaming = threading.Thread(target=stream, daemon=True)
        try:
            with edge_worker(cfg, "fb-edge", threads=1):
                streaming.start()
                eventually(on_edge, "the device on the edge", 30)
            eventually(lambda: not on_edge(), "the device off the stopped edge", 30)
            with edge_worker(cfg, "fb-edge", threads=1):
                back_at = time.monotonic()
                eventually(on_edge, "the device back on the edge", DWELL_S + 10)
                took = time.monotonic() - back_at
        finally:
            stop.set()
            if streaming.is_alive():
                streaming.join()
        answers = [f.exception(timeout=30) is None for f in futures]
    assert took <= DWELL_S + 10
    assert sum(answers) >= len(answers) - 4  # the ones sent to the edge as it stopped
