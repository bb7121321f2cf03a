"""What the planner and the dashboard do with what ``protocol.reading`` hears.

The reader's own checks are in test_documents.py; here, the rules its two callers
share: a retained plan topic holding no plan of the planner's (forged, unreadable)
is counted and published over, and a cleared telemetry topic removes the role from
the dashboard as it does from the planner.
"""

from __future__ import annotations

import time

import pytest
from graphs import chain, pool_of
from kit import Inbox

from splitmq.dashboard.state import LiveState
from splitmq.planner.service import PlannerService
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    LinkEstimate,
    ModelRef,
    Offline,
    Wants,
)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    """``chain``, never profiled: the planner keeps its devices on themselves, saying why."""
    return pool_of(tmp_path_factory.mktemp("pool"), {"chain": chain()})


def device_doc(pool: ModelPool, device: str) -> DeviceTelemetry:
    mv = pool.get("chain")
    return DeviceTelemetry(
        id=device, ts=time.time(), rps=0.0, in_flight=0, errors={},
        model=ModelRef(model="chain", version=mv.version),
        plan=make_plan(mv, mv.last_cut, "raw").for_device(device),
        link=LinkEstimate(uplink_bps=1e7, rtt_ms=5.0, age_s=0.5), speed=1.0, wants=Wants(),
        answered={},
    )  # fmt: skip


def test_the_planner_publishes_over_a_plan_topic_that_holds_none_of_its_plans(
    settings, pool, topics, make_client
) -> None:
    cfg = settings.model_copy(update={"pool": pool.root})
    observer = make_client("observer")
    topic = topics.plan("cam", "chain")
    plans = Inbox("plans for cam")
    observer.subscribe(topic, lambda m: plans(m.payload))
    with PlannerService(cfg, "pl-r", period_s=0.2, min_gap_s=0.0, settle_s=0.0) as planner:
        doc = device_doc(pool, "cam")
        observer.publish(topics.telemetry("device", "cam"), doc.to_json(), retain=True, json=True)
        first = Plan.parse(plans.wait(1, timeout=20)[-1])
        assert first.device == "cam" and "no profile" in first.reason
        forged = first.for_device("evil").to_json()
        for n, bad in enumerate((forged, b"{not json"), 1):
            observer.publish(topic, bad, retain=True)
            again = Plan.parse(plans.wait(2 * n + 1, timeout=20)[-1])  # the bad one, then ours
            assert again.same_option(first) and again.device == "cam"
            assert planner.errors["bad_plan"] == n
        assert "internal" not in planner.errors


def test_a_cleared_telemetry_topic_removes_the_role_from_the_dashboard(pool) -> None:
    state = LiveState()
    state.telemetry("device", "cam", device_doc(pool, "cam"), 1.0)
    state.telemetry("device", "cam", Offline(), 2.0)
    assert [(d["id"], d["status"]) for d in state.snapshot()["devices"]] == [("cam", "offline")]
    state.telemetry("device", "cam", None, 3.0)
    assert state.snapshot()["devices"] == []
