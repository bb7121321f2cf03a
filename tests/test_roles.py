"""Roles as operators see them: telemetry and presence, duplicates, the CLI, the demo."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from clitools import cli_env, run_cli, start_cli
from kit import Inbox, eventually, make_request
from PIL import Image

from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.shared.model.plans import make_plan
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.protocol.wire import pack_request
from splitmq.shared.units import Link

pytestmark = pytest.mark.slow


@pytest.fixture
def cfg(settings, real_pool):
    return settings.model_copy(update={"pool": real_pool.root})


def test_worker_telemetry_is_retained_and_the_will_marks_it_offline(
    cfg, topics, make_client, inbox
):
    proc = start_cli("edge", "--id", "tele", env=cli_env(cfg))
    docs = inbox()
    try:
        make_client("watch").subscribe(
            topics.telemetry("edge", "tele"), lambda m: docs(json.loads(m.payload))
        )
        online = docs.wait(1, timeout=60)[0]
        assert online["status"] == "online" and online["role"] == "edge"
        assert {"id", "ts", "models", "queued", "in_flight", "rps", "service", "errors"} <= set(
            online
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        offline = docs.wait(2, timeout=60)[-1]  # the broker publishes the Last Will
        assert offline == {"status": "offline"}
    finally:
        proc.kill()
        proc.wait()
    late = inbox()  # a planner starting now still sees it: retained
    make_client("late").subscribe(
        topics.telemetry("edge", "tele"), lambda m: late(json.loads(m.payload))
    )
    assert late.wait(1)[0] == {"status": "offline"}


def test_device_telemetry_estimates_its_link(cfg, real_pool, topics, make_client, inbox):
    """Over an emulated 20 Mbit/s, 10 ms link the device's own estimates come out near both."""
    mv = real_pool.get("mnist-cnn")
    docs = inbox()
    make_client("watch").subscribe(
        topics.telemetry("device", "dev-tele"), lambda m: docs(json.loads(m.payload))
    )
    link = Emulated(Link.parse("20mbit/10ms"))
    with (
        edge_worker(cfg, "tele-edge"),
        Device(
            cfg,
            "dev-tele",
            make_plan(mv, 4, "raw"),
            conditions=link,
            window=1,
            telemetry_period_s=0.2,
        ) as dev,
    ):
        for im in np.zeros((10, 28, 28), np.uint8):
            dev.infer(im)
        eventually(
            lambda: docs.items and docs.items[-1].get("link", {}).get("uplink_bps"),
            "device telemetry with an uplink estimate",
        )
    doc = [d for d in docs.items if d.get("status") == "online"][-1]
    assert doc["role"] == "device" and doc["speed"] == 1.0 and 0 < doc["battery"] <= 1
    link = doc["link"]
    assert 5 <= link["rtt_ms"] <= 40, link
    assert 8e6 <= link["uplink_bps"] <= 40e6, link  # 50 kB requests at 20 Mbit/s
    assert doc["plan"]["cut"] == 4


def test_a_repeated_request_gets_the_same_reply_again(cfg, real_pool, topics, make_client, inbox):
    """Served once, replayed to every repeat (the first reply may have been lost), and
    keyed by device: another device's request with the same id is its own."""
    mv = real_pool.get("mnist-cnn")
    request, marker = (make_request(model=mv, device="dev-dup") for _ in range(2))
    shadow = make_request(model=mv, device="dev-other", id=request.id)
    results, others = inbox("results for dev-dup"), inbox("results for dev-other")
    client = make_client("dup-sender")
    client.subscribe(topics.result("dev-dup"), results)
    client.subscribe(topics.result("dev-other"), others)
    topic = topics.request("edge", mv.name, 4, "dev-dup")
    # One thread serves the requests in the order they came: the marker, a fresh request
    # sent last, is answered after anything the repeats could have caused.
    with edge_worker(cfg, "dup-edge", threads=1) as worker:
        for _ in range(3):  # QoS 1 redelivery or a device retry looks like this
            client.publish(topic, pack_request(request))
        client.publish(topics.request("edge", mv.name, 4, "dev-other"), pack_request(shadow))
        client.publish(topic, pack_request(marker))
        got = results.wait(4, timeout=20)
        assert others.wait(1, timeout=20)[0].payload != got[0].payload
    counts = worker.stats.snapshot_counts()  # stopped: its threads are done
    assert [unpack_result(m.payload).id for m in got] == [request.id] * 3 + [marker.id]
    assert got[0].payload == got[1].payload == got[2].payload  # the very same reply
    assert counts.get("served") == 3 and counts.get("duplicates") == 2
    assert counts.get("replayed") == 2


def test_retained_requests_and_frames_are_not_run_by_a_worker_that_subscribes_later(
    cfg, real_pool, topics, make_client, inbox
):
    """The broker replays a retained request (or frame) to every worker that subscribes:
    its live copy was served when it was sent, so the replay is counted and acked, not run."""
    mv = real_pool.get("mnist-cnn")
    stale, fence = (make_request(model=mv, device="dev-ret") for _ in range(2))
    replies = inbox("results and errors for dev-ret")
    client = make_client("ret-sender")
    client.subscribe(topics.result("dev-ret"), replies, qos=1)
    client.subscribe(topics.error("dev-ret"), replies, qos=1)
    topic = topics.request("edge", mv.name, 4, "dev-ret")
    frame = topics.frame(mv.name, "dev-ret")
    client.publish(topic, pack_request(stale), retain=True, wait=5)  # before any worker
    client.publish(frame, png(np.zeros((28, 28), np.uint8)), retain=True, wait=5)
    # Receive Maximum 1, one thread: the fence reaches the worker after the replays, and
    # only once both were acked.
    with edge_worker(cfg, "ret-edge", threads=1, queue_size=0) as worker:
        client.publish(topic, pack_request(fence), wait=5)
        replies.wait(1, timeout=30)
        outcomes = worker.metrics.registry.get_sample_value(
            "splitmq_worker_requests_total", {"tier": "edge", "outcome": "retained"}
        )
    for retained in (topic, frame):
        client.publish(retained, b"", retain=True, wait=5)
    counts = worker.stats.snapshot_counts()
    assert [unpack_result(m.payload).id for m in replies.items] == [fence.id]
    assert counts.get("retained_requests") == 1 and counts.get("frames_stale") == 1
    assert counts.get("served") == 1
    assert outcomes == 1


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_device_command_with_a_plan_file(cfg, real_pool, tmp_path):
    mv = real_pool.get("mnist-cnn")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(mv, 4, "int8").for_device("cli-dev").to_json_dict()))
    images = tmp_path / "digits.npy"
    from splitmq.shared.offline.datasets import mnist_digits

    np.save(images, mnist_digits()[0][:5])
    with edge_worker(cfg, "cli-edge"):
        r = run_cli(
            "device",
            "--plan",
            str(plan),
            "--source",
            str(images),
            "--id",
            "cli-dev",
            "--json",
            env=cli_env(cfg),
        )
    assert r.returncode == 0, r.stderr
    *rows, summary = [json.loads(line) for line in r.stdout.splitlines()]
    assert summary["frames"] == summary["answered"] == 5 and summary["lost"] == 0
    labels = mnist_digits()[1][:5]
    assert [row["tier"] for row in rows] == ["edge"] * 5
    assert [int(row["top1"]) for row in rows] == list(labels)


def test_a_device_is_named_after_its_mqtt_user_by_default(cfg, real_pool, topics, make_client):
    """With `splitmq secure` a device may use only its user name as client id, so without
    --id that is its id (this open broker takes any user name and password)."""
    last = real_pool.get("mnist-cnn").last_cut  # device-only: no worker needed
    env = cli_env(cfg) | {"SPLITMQ_USERNAME": "cam9", "SPLITMQ_PASSWORD": "not-checked"}
    r = run_cli(
        "device", "--model", "mnist-cnn", "--cut", str(last), "--frames", "3", "--json", env=env
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["answered"] == 3
    telemetry = Inbox("cam9's retained telemetry")
    make_client("watch").subscribe(topics.telemetry("device", "cam9"), telemetry)
    assert telemetry.wait(1)[0].json() == {"status": "offline"}  # it ran, as cam9


def test_a_device_without_frames_streams_until_sigterm_then_sums_up(cfg) -> None:
    """No --frames: rows come out as answers arrive; SIGTERM stops submitting, the requests
    already sent still end, and the last line counts every one of them."""
    with edge_worker(cfg, "stream-edge"):
        proc = start_cli(
            "device", "--model", "mnist-cnn", "--cut", "4", "--codec", "int8",
            "--id", "stream-dev", "--json",
            env=cli_env(cfg), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            first = [json.loads(proc.stdout.readline()) for _ in range(20)]
            proc.send_signal(signal.SIGTERM)
            rest = [json.loads(line) for line in proc.stdout]
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
            proc.wait()
    rows, summary = first + rest[:-1], rest[-1]
    assert [r["frame"] for r in rows] == list(range(len(rows)))
    assert all(r["tier"] == "edge" for r in rows), rows
    assert summary["summary"] and summary["lost"] == 0 and summary["failed"] == 0
    assert summary["frames"] == summary["answered"] == len(rows) >= 20
    assert summary["retries"] == sum(r["attempts"] - 1 for r in rows)
    assert 0 < summary["p50_ms"] <= summary["p95_ms"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["device", "--link", "fast"], "bad link 'fast'"),
        (["device", "--cut", "5", "--codec", "q7"], "unknown codec 'q7'"),
        (["device", "--codec", "int8"], "--codec fix a plan: give --cut too"),
        (["device", "--cut", "5", "--codec", "jpeg:80"], "needs cut 0"),
        (["device", "--plan", "/no/such/plan.json"], "cannot read the plan"),
        (["device", "--model", "mnist-cnn", "--speed", "3"], "speed must be in (0, 1]"),
    ],
)
def test_device_command_mistakes_are_one_line(cfg, args, message):
    r = run_cli(*args, env=cli_env(cfg), timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr


def test_demo_from_the_readme(real_pool):
    """`splitmq demo --json`: its own broker and planner, real photos, nothing lost; every
    device runs a plan the planner made knowing its link."""
    r = run_cli("demo", "--json", "--frames", "40", env=cli_env(pool=real_pool.root), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s["frames"], s["answered"], s["lost"], s["errors"]) == (40, 40, 0, 0)
    assert s["agreement"] >= 0.97 and s["p50_ms"] > 0
    assert set(s["plans"]) == {"demo-dev0", "demo-dev1", "demo-dev2"}
    # a slow device on a fast link splits on any host: answers come from two tiers or more
    assert any(words != "device-only" for words in s["plans"].values())
    assert len(s["by_tier"]) >= 2, s["by_tier"]
    assert any(sw["reason"].startswith("planner: ") for sw in s["switches"])
    assert all(set(sw) == {"t_s", "device", "from", "to", "reason"} for sw in s["switches"])
    assert all(sw["from"] != sw["to"] and sw["t_s"] >= 0 for sw in s["switches"])


def test_the_fixed_plan_demo_escalates_to_the_cloud(real_pool):
    """`splitmq demo --fixed`: one plan for all; the edge's exit head answers, the cloud
    the rest."""
    args = ("demo", "--json", "--fixed", "--frames", "40")
    r = run_cli(*args, env=cli_env(pool=real_pool.root), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s["frames"], s["answered"], s["lost"], s["errors"]) == (40, 40, 0, 0)
    assert s["agreement"] >= 0.97
    assert s["by_tier"].get("edge", 0) > 0 and s["by_tier"].get("cloud", 0) > 0
    assert s["bytes_per_frame"] > 0


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the direct children of ``pid``, from /proc."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name = fields[0].split("(", 1)[1]
            if int(fields[1].split()[1]) == pid:
                kids.append((int(stat.parent.name), name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def test_a_demo_stopped_while_it_streams_prints_its_summary(real_pool, tmp_path):
    """SIGTERM mid-stream: it stops sending, every frame sent ends (nothing lost), and the
    summary comes out, without a traceback from the threads feeding the devices."""
    store = tmp_path / "r.db"
    proc = start_cli(
        "demo", "--json", "--frames", "100000", "--results", str(store),
        env=cli_env(pool=real_pool.root), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def streaming() -> bool:  # warm-ups are one row per device; more: frames flow
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            if not store.exists():
                return False
            with sqlite3.connect(store) as db:
                return db.execute("SELECT count(*) FROM results").fetchone()[0] > 10

        eventually(streaming, "the demo's frames in its results store", 180, every=0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    s = json.loads(out)
    assert 10 < s["frames"] < 100_000 and s["answered"] == s["frames"] and s["lost"] == 0
    assert "stopped: " in err and "Traceback" not in err and "closed" not in err
    assert all(sw["t_s"] >= 0 and sw["from"] != sw["to"] for sw in s["switches"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_demo_stops_everything_it_started(real_pool, sig):
    proc = start_cli(
        "demo",
        "--frames",
        "100000",
        env=cli_env(pool=real_pool.root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def its_broker() -> list[int]:
            assert proc.poll() is None, proc.stderr.read()
            return [pid for pid, name in _children(proc.pid) if name == "mosquitto"]

        # /proc has no event to wait on
        brokers = eventually(its_broker, "the demo to start its broker", timeout=120, every=0.1)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert (
        not Path(f"/proc/{brokers[0]}").exists()
        or Path(f"/proc/{brokers[0]}/stat").read_text().split()[2] == "Z"
    )
