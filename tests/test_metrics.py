"""Prometheus metrics, scraped over HTTP from real roles on a real mosquitto.

Each test makes the roles do known things (answers, forwards, bad requests,
timeouts, plan switches) and checks the scraped numbers against them and against
what the test saw on the wire, so a metric that drifts from the truth fails.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from clitools import cli_env, run_cli, start_cli
from graphs import chain, pool_of
from kit import Inbox, eventually, make_request
from prometheus_client.parser import text_string_to_metric_families

from splitmq.cloud.results import ResultsListener
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device, InferenceFailed
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.planner.metrics import PLAN_REASONS, PlannerMetrics
from splitmq.planner.service import PlannerService
from splitmq.shared.metrics import MetricsServer, serving
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import PlannerTelemetry
from splitmq.shared.protocol.wire import pack_request
from splitmq.shared.runtime.worker import Worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    """A pool with one tiny real model, ``chain`` (cuts 0-6, input [N, 4, 8, 8] float32)."""
    return pool_of(tmp_path_factory.mktemp("pool"), {"chain": chain()})


@pytest.fixture
def cfg(settings, pool):
    return settings.model_copy(update={"pool": pool.root})


def frames(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 4, 8, 8)).astype(np.float32)


def scrape(url: str) -> Samples:
    """Every sample ``url`` serves, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def local(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def expect(url: str, wanted: dict, what: str) -> Samples:
    """Scrape until every wanted sample has its value (counters settle just after a reply
    is published); the scrape that matched."""

    def matched() -> Samples | None:
        got = scrape(url)
        return got if all(got.get(k) == v for k, v in wanted.items()) else None

    try:
        return eventually(matched, what)
    except AssertionError:
        got = scrape(url)
        differ = {k: (got.get(k), v) for k, v in wanted.items() if got.get(k) != v}
        raise AssertionError(f"{what}: (scraped, expected) differ: {differ}") from None


def total_bytes(box: Inbox) -> int:
    return sum(len(m.payload) for m in box.items)


def test_workers_and_a_device_count_what_they_did(cfg, pool, topics, make_client, inbox):
    """5 frames device -> edge -> cloud, a request repeated, a malformed and an expired one."""
    mv = pool.get("chain")
    plan = make_plan(mv, 2, "raw", cloud_cut=4)
    watch = make_client("watch")
    answers, others = inbox("results for dev-m"), inbox("replies to dev-x")
    forwards, sent = inbox("forwards to the cloud"), inbox("requests sent to the edge")
    watch.subscribe(topics.result("dev-m"), answers)
    watch.subscribe(topics.request("cloud", "chain", 4, "dev-m"), forwards)
    for topic in (topics.result("dev-x"), topics.error("dev-x")):
        watch.subscribe(topic, others)
    repeated = make_request(model=mv, device="dev-x", start=2)
    expired = make_request(model=mv, device="dev-x", start=2, deadline=time.time())
    to_edge = topics.request("edge", "chain", 2, "dev-x")
    # One edge thread serves in arrival order: the repeat comes after the first is answered.
    with (
        edge_worker(cfg, "m-edge", threads=1) as edge,
        Worker(cfg, "cloud", "m-cloud") as cloud,
        MetricsServer(edge.metrics.registry, 0) as edge_http,
        MetricsServer(cloud.metrics.registry, 0) as cloud_http,
        Device(cfg, "dev-m", plan) as dev,
        MetricsServer(dev.metrics.registry, 0) as dev_http,
    ):
        assert all(dev.infer(x).tier == "cloud" for x in frames(5))
        for payload in (
            pack_request(repeated),
            pack_request(repeated),
            b"no",
            pack_request(expired),
        ):
            sent(payload)
            watch.publish(to_edge, payload)
        others.wait(4, timeout=20)  # two results (one replayed), two errors
        answers.wait(5, timeout=20)
        forwards.wait(5, timeout=20)

        edge_seen = expect(
            local(edge_http.port),
            {
                sample("splitmq_worker_requests_total", tier="edge", outcome="forwarded"): 5,
                sample("splitmq_worker_requests_total", tier="edge", outcome="answered"): 1,
                sample("splitmq_worker_requests_total", tier="edge", outcome="replayed"): 1,
                sample("splitmq_worker_requests_total", tier="edge", outcome="duplicate"): 0,
                sample("splitmq_worker_requests_total", tier="edge", outcome="bad_payload"): 1,
                sample("splitmq_worker_requests_total", tier="edge", outcome="expired"): 1,
                sample(
                    "splitmq_worker_hop_seconds_count",
                    tier="edge",
                    model="chain",
                    version="1",
                    segment="2-4",
                ): 5,
                sample(
                    "splitmq_worker_hop_seconds_count",
                    tier="edge",
                    model="chain",
                    version="1",
                    segment="2-end",
                ): 1,
                sample("splitmq_worker_queue_wait_seconds_count", tier="edge"): 6,
                sample("splitmq_worker_in_flight", tier="edge"): 0,
                sample("splitmq_worker_queued", tier="edge"): 0,
                sample("splitmq_worker_threads", tier="edge"): 1,
                # what it published: the forwards, and every reply to dev-x
                sample("splitmq_worker_sent_bytes_total", tier="edge"): total_bytes(forwards)
                + total_bytes(others),
            },
            "the edge's metrics",
        )
        cloud_seen = expect(
            local(cloud_http.port),
            {
                sample("splitmq_worker_requests_total", tier="cloud", outcome="answered"): 5,
                sample("splitmq_worker_requests_total", tier="cloud", outcome="forwarded"): 0,
                sample(
                    "splitmq_worker_hop_seconds_count",
                    tier="cloud",
                    model="chain",
                    version="1",
                    segment="4-end",
                ): 5,
                sample("splitmq_worker_received_bytes_total", tier="cloud"): total_bytes(forwards),
                sample("splitmq_worker_sent_bytes_total", tier="cloud"): total_bytes(answers),
            },
            "the cloud's metrics",
        )
        dev_seen = expect(
            local(dev_http.port),
            {
                sample("splitmq_device_answered_total", tier="cloud"): 5,
                sample("splitmq_device_answered_total", tier="edge"): 0,
                sample("splitmq_device_e2e_seconds_count", tier="cloud"): 5,
                sample("splitmq_device_hop_seconds_count", tier="device", part="compute"): 5,
                sample("splitmq_device_hop_seconds_count", tier="edge", part="compute"): 5,
                sample("splitmq_device_hop_seconds_count", tier="cloud", part="transfer"): 5,
                sample("splitmq_device_retries_total"): 0,
                sample("splitmq_device_in_flight"): 0,
                sample("splitmq_device_plan_cut", model="chain", version="1"): 2,
                sample("splitmq_device_ignored_answers_total", why="duplicate"): 0,
            },
            "the device's metrics",
        )
    # Bytes, as the wire saw them: the edge received the device's uplink and what the test
    # sent, and nothing else.
    uplink = dev_seen[sample("splitmq_device_uplink_bytes_total")]
    assert uplink > 5 * 4 * 8 * 8 * 4  # five raw float32 [1, 4, 8, 8] tensors, and headers
    received = edge_seen[sample("splitmq_worker_received_bytes_total", tier="edge")]
    assert received == uplink + sum(map(len, sent.items))
    # Every answered request is in the latency histogram, within its own e2e time.
    e2e_sum = dev_seen[sample("splitmq_device_e2e_seconds_sum", tier="cloud")]
    compute = cloud_seen[
        sample(
            "splitmq_worker_hop_seconds_sum",
            tier="cloud",
            model="chain",
            version="1",
            segment="4-end",
        )
    ]
    assert 0 < compute < e2e_sum
    assert dev_seen[sample("splitmq_device_e2e_seconds_bucket", tier="cloud", le="+Inf")] == 5
    assert sample("splitmq_worker_requests_total", tier="edge", outcome="internal") not in edge_seen


def test_a_device_counts_timeouts_retries_and_refusals(cfg, pool, topics, make_client, inbox):
    """A request nobody answers is retried once, then times out; one to a tier with no
    worker fails at once with no_worker."""
    mv = pool.get("chain")
    swallowed = inbox("requests to the silent edge")
    make_client("silent").subscribe(topics.request("edge", "chain", 2, "dev-t"), swallowed)
    with (
        Device(cfg, "dev-t", make_plan(mv, 2, "raw"), timeout_s=0.3, retries=1) as dev,
        MetricsServer(dev.metrics.registry, 0) as http,
    ):
        with pytest.raises(InferenceFailed, match="timeout"):
            dev.infer(frames(1)[0])
        swallowed.wait(2)
        dev.switch(make_plan(mv, 2, "raw", tier="cloud"), "to a tier with no worker")
        with pytest.raises(InferenceFailed, match="no_worker"):
            dev.infer(frames(1)[0])
        seen = expect(
            local(http.port),
            {
                sample("splitmq_device_failed_total", code="timeout"): 1,
                sample("splitmq_device_failed_total", code="no_worker"): 1,
                sample("splitmq_device_retries_total"): 1,
                sample("splitmq_device_answered_total", tier="edge"): 0,
                sample("splitmq_device_e2e_seconds_count", tier="edge"): None,
                sample("splitmq_device_plan_switches_total", source="caller"): 1,
                sample("splitmq_device_in_flight"): 0,
            },
            "the device's metrics",
        )
    payloads = [m.payload for m in swallowed.items]
    assert len(payloads) == 2  # the first attempt and its retry
    refused = seen[sample("splitmq_device_uplink_bytes_total")] - sum(map(len, payloads))
    assert 0 < refused < max(map(len, payloads)) * 1.5  # plus the one the broker had nobody for


def test_the_planner_counts_plans_and_refusals_and_the_device_its_switches(
    cfg, pool, topics, make_client
):
    """``chain`` has no profile: the planner keeps a following device on itself, saying why;
    a forged telemetry document is refused."""
    mv = pool.get("chain")
    with (
        PlannerService(cfg, "pl-m", settle_s=0.0) as planner,
        MetricsServer(planner.metrics.registry, 0) as planner_http,
        Device(cfg, "dev-f", local_plan(mv), follow=True) as dev,
        MetricsServer(dev.metrics.registry, 0) as dev_http,
    ):
        forged = {"role": "edge", "id": "someone-else"}
        make_client("forger").publish_json(topics.telemetry("edge", "e-1"), forged, retain=True)
        expect(
            local(dev_http.port),
            {
                sample("splitmq_device_plan_switches_total", source="planner"): 1,
                sample("splitmq_device_plan_switches_total", source="fallback"): 0,
                sample("splitmq_device_plan_cut", model="chain", version="1"): mv.last_cut,
            },
            "the device's switch to the planner's plan",
        )
        expect(
            local(planner_http.port),
            {
                sample("splitmq_planner_plans_published_total", reason="not_ready"): 1,
                sample("splitmq_planner_plans_published_total", reason="first"): 0,
                sample("splitmq_planner_errors_total", code="bad_telemetry"): 1,
                sample("splitmq_planner_devices"): 1,
            },
            "the planner's metrics",
        )
        switch = dev.plans.switches[-1]
        assert switch.source == "planner" and "no profile" in switch.reason


def test_why_a_plan_was_published_and_what_the_broker_dropped():
    """The reasons a live test cannot reach with an unprofiled model, and $SYS's count."""
    dropped: list[int | None] = [None]
    status = PlannerTelemetry(id="pl", ts=0.0, rps=0.0, in_flight=0, errors={}, devices=0, plans=0)
    metrics = PlannerMetrics(lambda ts: status.model_copy(update={"broker_dropped": dropped[0]}))
    registry = metrics.registry
    assert registry.get_sample_value("splitmq_broker_dropped_messages_total") is None
    dropped[0] = 7
    assert registry.get_sample_value("splitmq_broker_dropped_messages_total") == 7
    old = Plan(device="d", model="m", version=1, cut=2, codec="raw", route=(), objective="latency")
    retained = {("d", "m"): old}
    cases = [
        (old, {}, True, "first"),
        (old.model_copy(update={"version": 2}), retained, True, "version"),
        (old.model_copy(update={"objective": "energy"}), retained, True, "objective"),
        (old.model_copy(update={"cut": 3}), retained, True, "replanned"),
        (old, retained, False, "not_ready"),
    ]
    for n, (plan, before, ready, reason) in enumerate(cases, 1):
        metrics.published(plan, before, ready=ready)
        counts = {
            why: registry.get_sample_value("splitmq_planner_plans_published_total", {"reason": why})
            for why in PLAN_REASONS
        }
        assert counts[reason] == 1 and sum(counts.values()) == n, (reason, counts)


def read_lines(proc: subprocess.Popen) -> Inbox:
    """The process's stderr, line by line, as it comes."""
    lines = Inbox("log lines")
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: [lines(line) for line in stream], daemon=True).start()
    return lines


def served_at(lines: Inbox, pattern: str) -> str:
    found = eventually(
        lambda: next((m for line in lines.items if (m := re.search(pattern, line))), None),
        f"a line matching {pattern!r}",
        timeout=60,
    )
    return local(int(found.group(1)))


def test_splitmq_edge_serves_metrics_on_the_port_it_logs(cfg, pool, tmp_path):
    mv = pool.get("chain")
    proc = start_cli(
        "edge",
        "--id",
        "cli-m",
        "--metrics-port",
        "0",
        env=cli_env(cfg),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = served_at(read_lines(proc), r"metrics of cli-m on http://127\.0\.0\.1:(\d+)/metrics")
        first = scrape(url)
        assert first[sample("splitmq_worker_threads", tier="edge")] == 2
        with Device(cfg, "dev-cli", make_plan(mv, 2, "raw")) as dev:
            for x in frames(3):
                assert dev.infer(x).tier == "edge"
        expect(
            url,
            {sample("splitmq_worker_requests_total", tier="edge", outcome="answered"): 3},
            "the CLI edge's answers",
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_splitmq_device_serves_metrics_while_it_runs(cfg, pool, tmp_path):
    source = tmp_path / "frames.npy"
    np.save(source, frames(200))
    with edge_worker(cfg, "dev-cli-edge"):
        proc = start_cli(
            "device",
            "--model",
            "chain",
            "--cut",
            "2",
            "--source",
            str(source),
            "--fps",
            "5",
            "--id",
            "dev-c",
            "--metrics-port",
            "0",
            "--json",
            env=cli_env(cfg),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            url = served_at(read_lines(proc), r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
            eventually(
                lambda: scrape(url)[sample("splitmq_device_answered_total", tier="edge")] >= 2,
                "two answers in the device's metrics",
            )
            proc.send_signal(signal.SIGINT)  # stop submitting; what was sent still ends
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
            proc.wait()


def test_a_port_in_use_is_one_line_error(cfg, pool):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("edge", "--metrics-port", str(port), env=cli_env(cfg), timeout=60)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert f"cannot serve metrics on 127.0.0.1:{port}" in last and "Traceback" not in r.stderr


def test_a_port_out_of_range_is_refused(cfg):
    r = run_cli("planner", "--metrics-port", "70000", env=cli_env(cfg), timeout=60)
    assert r.returncode == 2 and "--metrics-port" in r.stderr


def test_the_metrics_server_stops_and_frees_its_port() -> None:
    registry = PlannerMetrics(
        lambda ts: PlannerTelemetry(
            id="p", ts=ts, rps=0, in_flight=0, errors={}, devices=2, plans=0
        )
    ).registry
    with serving(registry, 0) as server:
        assert server is not None
        assert scrape(local(server.port))[sample("splitmq_planner_devices")] == 2
    with pytest.raises(OSError):
        urllib.request.urlopen(local(server.port), timeout=5)
    with serving(registry, None) as nothing:
        assert nothing is None


def test_the_docs_and_the_dashboard_name_every_metric_and_only_those(cfg, pool, tmp_path):
    """docs/operations.md lists each metric the roles expose; the Grafana dashboard uses
    only metrics that exist."""
    docs = Path(__file__).parent.parent / "docs"
    section = (docs / "operations.md").read_text().split("## Metrics", 1)[1]
    documented = set(re.findall(r"`(splitmq_\w+)`", section))
    roles = (
        edge_worker(cfg, "d-edge"),
        # a lab device: its simulated battery is a metric too
        Device(cfg, "d-dev", make_plan(pool.get("chain"), 2, "raw"), conditions=Emulated()),
        PlannerService(cfg, "d-planner"),
        ResultsListener(cfg, str(tmp_path / "r.db"), "d-recorder"),
    )  # never started: their metrics exist from the start
    exposed = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for role in roles
        for family in role.metrics.registry.collect()
    }
    until_measured = {
        "splitmq_device_uplink_estimate_bits_per_second",
        "splitmq_device_rtt_estimate_seconds",
        "splitmq_broker_dropped_messages_total",
        "splitmq_planner_wan_up",  # a site's planner, once it heard its bridge
    }
    assert exposed <= documented and documented - exposed == until_measured
    dashboard = json.loads((docs / "grafana-splitmq.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"splitmq_\w+", expr)
    }
    assert used and used <= documented, used - documented
