"""Model families over a real broker: the Fashion-MNIST family (a larger and a smaller
multi-exit CNN trained here, each with an int8 variant), measured against its
reference, planned for by member, and streamed through member switches losing
nothing."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future

import pytest
from clitools import cli_env, run_cli
from kit import eventually

from splitmq.device.follow import starting_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.planner.service import PlannerService
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import fashion_mnist
from splitmq.shared.units import Link

pytestmark = pytest.mark.slow

FAMILY = "fashion-mnist"


@pytest.fixture(scope="module")
def members(real_pool: ModelPool) -> dict:
    return {mv.name: mv for mv in real_pool.family(FAMILY)}


def test_every_member_is_measured_against_the_most_accurate(real_pool, members) -> None:
    r = run_cli("family", "show", FAMILY, "--json", env=cli_env(pool=real_pool.root))
    assert r.returncode == 0, r.stderr
    rows = {row["model"].split("@")[0]: row for row in json.loads(r.stdout)["members"]}
    assert set(rows) == set(members) and len(rows) >= 4
    (reference,) = {row["reference"] for row in rows.values()}
    assert rows[reference]["accuracy"] == max(row["accuracy"] for row in rows.values())
    assert rows[reference]["agreement"] == 1.0
    for row in rows.values():
        assert row["samples"] >= 1000 and "Fashion-MNIST test" in row["data"]
    assert min(row["agreement"] for row in rows.values()) < 1.0  # members differ


def test_splitmq_plan_names_the_member_and_shows_the_others(real_pool, members) -> None:
    env = cli_env(pool=real_pool.root)
    args = ("plan", FAMILY, "--uplink", "20mbit", "--rtt", "10ms", "--device-speed", "0.1")
    r = run_cli(*args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["plan"]["family"] == FAMILY and doc["plan"]["model"] in members
    assert set(doc["members"]) | {doc["plan"]["model"]} <= set(members)
    chosen = doc["predicted"]
    for other in doc["members"].values():
        # the chosen member's plan is the best of all for the objective (latency)
        assert chosen["latency_ms"] <= other["predicted"]["latency_ms"] + 1e-9
    table = run_cli(*args, env=env)
    assert f"{FAMILY}: {doc['plan']['model']}" in table.stdout
    assert "the best plan of each other member" in table.stdout


def test_a_device_given_the_family_runs_the_planners_member_and_loses_nothing(
    settings, real_pool, members
) -> None:
    """It starts on the smallest member alone; the planner's plan names a member (its
    head loaded, then switched to between frames); a switch to another member under load
    is answered throughout: every frame gets its answer."""
    cfg = settings.model_copy(update={"pool": real_pool.root})
    plan, family = starting_plan(real_pool, FAMILY)
    assert family == FAMILY
    assert plan.model == min(members.values(), key=lambda mv: mv.cuts[-1].macs_before).name
    images, labels = fashion_mnist("test")
    futures: list[Future] = []
    stop = threading.Event()
    with (
        edge_worker(cfg, "fam-edge", threads=1),
        PlannerService(cfg, "fam-pl", period_s=0.2, min_gap_s=0.0, settle_s=0.0),
        Device(
            cfg,
            "fam-dev",
            plan,
            conditions=Emulated(Link.parse("50mbit/5ms"), 0.1, battery=None),
            follow=True,
            telemetry_period_s=0.5,
            window=4,
            family=FAMILY,
        ) as dev,
    ):

        def stream() -> None:
            while not stop.is_set():
                futures.append(dev.submit(images[len(futures) % 200]))

        streaming = threading.Thread(target=stream, daemon=True)
        streaming.start()
        try:
            eventually(
                lambda: (
                    any(s.source == "planner" for s in dev.plans.switches)
                    or dev.plans.plan.objective is not None
                ),
                "the planner's plan",
                30,
            )
            planned = dev.plans.plan
            assert planned.family == FAMILY and planned.model in members
            other = next(m for m in members.values() if m.name != planned.model)
            before = len(futures)
            dev.switch(make_plan(other, other.last_cut // 2, "raw", "edge"), "a test's switch")
            eventually(lambda: len(futures) >= before + 40, "frames on the other member", 30)
        finally:
            stop.set()
            streaming.join()
        answers = [f.result(timeout=30) for f in futures]
    assert len(answers) == len(futures) > 40
    switched = [s for s in dev.plans.switches if s.new.model != s.old.model]
    assert switched, "the device changed member at least once"
    right = sum(a.top1 == labels[i % 200] for i, a in enumerate(answers))
    assert right / len(answers) >= 0.8  # every member is a working classifier
