"""Every answer is a result on MQTT, whichever tier computed it: a device publishes what
it answered itself on ``result/<device>`` (``tier: "device"``), without hearing it back,
and one recorder keeps every tier's answers from the topic, with the device's cut,
codec and route; while the broker is away a device's own results wait, up to a bound."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import cli_env, run_cli, start_cli
from kit import eventually

from splitmq.broker.launcher import Broker
from splitmq.cloud.results import ResultsListener, ResultsStore
from splitmq.device import sender
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.protocol.results import HopLatency, Result, TopK, pack_result, unpack_result
from splitmq.shared.protocol.wire import Hop
from splitmq.shared.runtime.worker import Worker

pytestmark = pytest.mark.slow

MODEL = "mnist-cnn"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return mnist_digits()[0][:40]


def test_a_device_publishes_what_it_answered_itself(
    settings, real_pool: ModelPool, make_client, inbox, digits
) -> None:
    mv = real_pool.get(MODEL)
    cfg = settings.model_copy(update={"pool": real_pool.root})
    heard = inbox("the device's own results")
    make_client("listener").subscribe(cfg.topics.result("local-dev"), heard, qos=1)
    with Device(cfg, "local-dev", make_plan(mv, mv.last_cut)) as dev:
        answers = [dev.infer(d) for d in digits[:10]]
        results = [unpack_result(m.payload) for m in heard.wait(10, timeout=10)]
        assert dev.stats.counts["duplicate_answers"] == 0  # it did not hear itself
    assert [a.tier for a in answers] == ["device"] * 10
    assert [r.id for r in results] == [a.id for a in answers]
    for result, answer in zip(results, answers, strict=True):
        assert (result.tier, result.device, result.model) == ("device", "local-dev", MODEL)
        assert result.top == answer.top and result.exit == answer.exit
        assert (result.cut, result.codec, result.route, result.bytes) == (None, None, (), 0)
        assert result.sent_at is not None and result.sent_at <= result.t_sent


def test_one_recorder_keeps_every_tiers_answers_from_the_topic(
    settings, real_pool: ModelPool, tmp_path, digits
) -> None:
    """A device answering itself, one answered by the edge, one by the cloud after the
    edge forwarded: each row says what the device sent and the route it took."""
    mv = real_pool.get(MODEL)
    cfg = settings.model_copy(update={"pool": real_pool.root})
    url = f"sqlite:///{tmp_path / 'results.db'}"
    forward = make_plan(mv, 2, "int8", "edge", cloud_cut=7, forward_codec="int8")
    plans = {
        "rec-local": make_plan(mv, mv.last_cut),
        "rec-edge": make_plan(mv, 4, "raw", "edge"),
        "rec-fwd": forward,
    }
    with (
        ResultsListener(cfg, url, "rec-listener") as listener,
        edge_worker(cfg, "rec-e"),
        Worker(cfg, "cloud", "rec-c"),
    ):
        for device, plan in plans.items():
            with Device(cfg, device, plan) as dev:
                for d in digits[:5]:
                    dev.infer(d)
        eventually(lambda: listener.counts()["recorded"] == 15, "15 rows recorded", 15)
    assert listener.counts() == {"recorded": 15, "failed": 0, "dropped": 0, "rejected": 0}
    with ResultsStore(url) as db:
        rows = {device: db.query(device=device) for device in plans}
    local, edge, fwd = (rows[d] for d in plans)
    assert {(r["tier"], r["cut"], r["codec"], str(r["route"])) for r in local} == {
        ("device", None, None, "[]")
    }
    assert {(r["tier"], r["cut"], r["codec"]) for r in edge} == {("edge", 4, "raw")}
    assert all([h["tier"] for h in r["route"]] == ["edge"] for r in edge)
    assert {(r["tier"], r["cut"], r["codec"]) for r in fwd} == {("cloud", 2, "int8")}
    assert all(r["route"] == [vars(h) for h in forward.route] for r in fwd)
    assert forward.route[0] == Hop("edge", 7, None, "int8")


def test_results_wait_for_the_broker_up_to_a_bound(
    real_pool: ModelPool, broker_dir, tmp_path, digits, monkeypatch
) -> None:
    """With the broker down a device-only device keeps answering; its first
    ``LOCAL_BACKLOG`` results wait and reach the recorder once the broker is back, the
    rest are dropped and counted, never piled up."""
    monkeypatch.setattr(sender, "LOCAL_BACKLOG", 12)
    mv = real_pool.get(MODEL)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    with Broker(data_dir=broker_dir) as broker:
        cfg = broker.settings(pool=real_pool.root)
        with (
            ResultsListener(cfg, url, "away-listener") as listener,
            Device(cfg, "away-dev", make_plan(mv, mv.last_cut)) as dev,
        ):
            online = [dev.infer(d).id for d in digits[:5]]
            eventually(lambda: listener.counts()["recorded"] == 5, "the online results", 10)
            broker.stop()
            offline = [dev.infer(d).id for d in digits[5:25]]
            assert dev.stats.counts["results_dropped"] == 8
            broker.restart()
            eventually(lambda: listener.counts()["recorded"] == 17, "the queued results", 20)
        with ResultsStore(url) as db:
            kept = {r["request_id"] for r in db.query(device="away-dev", limit=100)}
    assert kept == set(online) | set(offline[:12])


def _stored(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM results").fetchone()[0])


def test_splitmq_recorder_records_until_sigterm(
    settings, real_pool: ModelPool, tmp_path, digits, inbox
) -> None:
    mv = real_pool.get(MODEL)
    cfg = settings.model_copy(update={"pool": real_pool.root})
    store = tmp_path / "results.db"
    env = cli_env(cfg) | {"SPLITMQ_RESULTS": str(store)}
    proc = start_cli("-v", "recorder", "--id", "cli-recorder", env=env, stderr=subprocess.PIPE)
    lines = inbox("the recorder's log")
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines(line) for line in proc.stderr], daemon=True)
    reader.start()
    try:
        eventually(lambda: any(b"recording the answers" in x for x in lines.items), "its start")
        with Device(cfg, "cli-dev", make_plan(mv, mv.last_cut)) as dev:
            ids = {dev.infer(d).id for d in digits[:6]}
        # the broker has them all once the device closed; the recorder, a moment later
        eventually(lambda: _stored(store) == 6, "the 6 answers in the store")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    reader.join(timeout=10)
    assert any(b"recorded 6 answers (0 failed, 0 dropped, 0 rejected)" in x for x in lines.items)
    shown = run_cli("results", "--json", "--tier", "device", env=env)
    assert shown.returncode == 0, shown.stderr
    assert {r["request_id"] for r in json.loads(shown.stdout)["results"]} == ids


def test_the_recorder_refuses_a_result_for_another_device_or_from_the_future(
    settings, make_client, tmp_path
) -> None:
    """Retention reads a result's answered time, so one stamped far ahead would never be
    deleted; a document naming another device than its topic is a forgery. Neither is
    stored; a good one after them is."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    now = time.time()

    def result(device: str, t_sent: float) -> bytes:
        hop = HopLatency("device", device, None, None, 1.0, 0.0, None)
        top = (TopK(3, "3", 0.9),)
        return pack_result(
            Result("a1b2", device, MODEL, 1, top, "device", "out", (hop,), 0, t_sent)
        )

    writer = make_client("forger")
    with ResultsListener(settings, url, "guard") as listener:
        topic = settings.topics.result
        writer.publish(topic("cam-x"), result("cam-y", now), qos=1, wait=5)
        writer.publish(topic("cam-x"), result("cam-x", now + 86_400), qos=1, wait=5)
        writer.publish(topic("cam-x"), result("cam-x", now), qos=1, wait=5)
        eventually(lambda: listener.counts()["recorded"] == 1, "the good result recorded")
    assert listener.counts() == {"recorded": 1, "failed": 0, "dropped": 0, "rejected": 2}
