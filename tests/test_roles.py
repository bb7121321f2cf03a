"""Roles as operators see them: telemetry and presence, duplicates, the CLI, the demo."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from clitools import cli_env, run_cli, start_cli
from kit import eventually, make_request

from splitmq.cloud.worker import cloud_worker
from splitmq.device.link import LinkSpec
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.model.plans import make_plan
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.protocol.wire import pack_request

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
    link = LinkSpec.parse("20mbit/10ms")
    with (
        edge_worker(cfg, "tele-edge"),
        Device(
            cfg, "dev-tele", make_plan(mv, 4, "raw"), link=link, window=1, telemetry_period_s=0.2
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


def test_a_duplicate_request_is_answered_once(cfg, real_pool, topics, make_client, inbox):
    mv = real_pool.get("mnist-cnn")
    request, marker = (make_request(model=mv, device="dev-dup") for _ in range(2))
    results = inbox("results for dev-dup")
    client = make_client("dup-sender")
    client.subscribe(topics.result("dev-dup"), results)
    topic = topics.request("edge", mv.name, 4, "dev-dup")
    # One thread serves the requests in the order they came: the marker, a fresh request
    # sent last, is answered after anything the duplicates could have caused.
    with edge_worker(cfg, "dup-edge", threads=1) as worker:
        for _ in range(3):  # QoS 1 redelivery or a device retry looks like this
            client.publish(topic, pack_request(request))
        client.publish(topic, pack_request(marker))
        answered = [unpack_result(m.payload).id for m in results.wait(2, timeout=20)]
    counts = worker.stats.snapshot_counts()  # stopped: its threads are done
    assert answered == [request.id, marker.id]
    assert counts.get("duplicates") == 2 and counts.get("served") == 2


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
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    labels = mnist_digits()[1][:5]
    assert [row["tier"] for row in rows] == ["edge"] * 5
    assert [int(row["top1"]) for row in rows] == list(labels)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["device", "--link", "fast"], "bad link 'fast'"),
        (["device", "--codec", "q7"], "unknown codec 'q7'"),
        (["device", "--cut", "5", "--codec", "jpeg:80"], "needs cut 0"),
        (["device", "--plan", "/no/such/plan.json"], "cannot read the plan"),
        (["device", "--model", "mnist-cnn", "--speed", "3"], "speed must be in (0, 1]"),
    ],
)
def test_device_command_mistakes_are_one_line(cfg, args, message):
    r = run_cli(*args, env=cli_env(cfg), timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr


def test_cloud_results_store(cfg, real_pool, tmp_path):
    mv = real_pool.get("mnist-cnn")
    store = tmp_path / "results.jsonl"
    with (
        cloud_worker(cfg, "store-cloud", results=store),
        Device(cfg, "dev-store", make_plan(mv, 4, "raw", tier="cloud")) as dev,
    ):
        answers = [dev.infer(np.zeros((28, 28), np.uint8)) for _ in range(3)]
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    assert [line["id"] for line in lines] == [a.id for a in answers]


def test_demo_from_the_readme(real_pool):
    """`splitmq demo --json`: its own broker, real photos, nothing lost, both tiers answer."""
    r = run_cli("demo", "--json", "--frames", "40", env=cli_env(pool=real_pool.root), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s["frames"], s["answered"], s["lost"], s["errors"]) == (40, 40, 0, 0)
    assert s["agreement"] >= 0.97
    assert s["by_tier"].get("edge", 0) > 0 and s["by_tier"].get("cloud", 0) > 0
    assert s["p50_ms"] > 0 and s["bytes_per_frame"] > 0


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
