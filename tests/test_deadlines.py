"""``infer(timeout=...)`` is a deadline that holds through a broker outage: the device
answers itself in time (``fallback="local"``, the default) and says why, or fails the
request as ``deadline`` (``fallback="fail"``); once the broker is back, its plan's tier
answers again."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kit import eventually

from splitmq import api
from splitmq.broker.launcher import Broker
from splitmq.device.answers import InferenceFailed
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits

pytestmark = pytest.mark.slow

MODEL = "mnist-cnn"
#: What the deadline may be overrun by on a loaded 2-core host: thread wake-ups and the
#: whole model's run (about a millisecond here), never the outage's 10 s.
SLACK_S = 1.0


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return mnist_digits()[0][:8]


def test_a_deadline_holds_through_a_broker_outage(real_pool: ModelPool, broker_dir, digits) -> None:
    mv = real_pool.get(MODEL)
    with Broker(data_dir=broker_dir) as broker:
        cfg = broker.settings(pool=real_pool.root)
        plan = make_plan(mv, 4, "raw", "edge")
        with (
            edge_worker(cfg, "dl-edge") as edge,
            Device(cfg, "dl-dev", plan, timeout_s=3.0) as dev,
            Device(cfg, "dl-strict", plan, timeout_s=3.0, fallback="fail") as strict,
        ):
            online = dev.infer(digits[0], timeout=10)
            assert online.tier == "edge" and online.fallback is None
            assert strict.infer(digits[0], timeout=10).tier == "edge"
            broker.stop()
            started = time.monotonic()
            answer = dev.infer(digits[0], timeout=1.0)
            took = time.monotonic() - started
            assert took < 1.0 + SLACK_S, took
            assert answer.tier == "device" and answer.top1 == online.top1
            assert answer.fallback == f"no answer from {plan.words} within 1 s"
            started = time.monotonic()
            with pytest.raises(InferenceFailed) as failed:
                strict.infer(digits[1], timeout=1.0)
            assert time.monotonic() - started < 1.0 + SLACK_S
            assert failed.value.code == "deadline"
            assert dev.stats.counts["fallback_local"] == 1
            assert strict.stats.counts["fallback_local"] == 0
            broker.restart()
            eventually(lambda: edge.client.connected and dev.client.connected, "both back", 30)
            back = dev.infer(digits[2], timeout=30)
            assert back.tier == "edge" and back.fallback is None


def test_the_library_device_takes_a_deadline_and_a_fallback(
    settings, real_pool: ModelPool, digits
) -> None:
    """Nobody serves the edge: the plan's tier cannot answer, so the device does, at once
    (the broker says no worker is subscribed), and the answer says why."""
    mv = real_pool.get(MODEL)
    cfg = settings.model_copy(update={"pool": real_pool.root})
    with api.Device(MODEL, plan=make_plan(mv, 4, "raw", "edge"), settings=cfg) as dev:
        answer = dev.infer(digits[3], timeout=5)
    assert answer.tier == "device" and answer.fallback is not None
    assert "no_worker" in answer.fallback
    with (
        api.Device(
            MODEL, plan=make_plan(mv, 4, "raw", "edge"), settings=cfg, fallback="fail"
        ) as dev,
        pytest.raises(InferenceFailed, match="no_worker"),
    ):
        dev.infer(digits[3], timeout=5)
