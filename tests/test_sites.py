"""Sites: a site broker bridged to the cloud broker, both real mosquittos with TLS and
users, across an emulated WAN (``lab.wan.WanRelay``: 20 ms RTT, cut on demand).

Devices, an edge and the site's planner are at site ``north``; a cloud worker is at the
cloud broker. Escalations are answered across the bridge, the WAN is measured and
planned with, an outage moves the site's devices off the cloud and back, and no site
reads or forges another's traffic (docs/operations.md, sites)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path

import pytest
from clitools import cli_env, run_cli
from kit import eventually

from splitmq.broker.launcher import Broker, free_port
from splitmq.broker.secure import SecureDir
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.sites import SiteAndCloud
from splitmq.shared.errors import BrokerError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.protocol.sites import bridge_state
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.transport.mqtt import MqttClient

pytestmark = pytest.mark.slow

MODEL = "mnist-cnn"
SITE, OTHER_SITE = "north", "south"
DEVICES = ("cam1", "cam2")
WAN_RTT_MS = 20.0
WAN_BPS = 10e6
T = Topics()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteAndCloud]:
    """As root the WAN is shaped by ``tc tbf`` in a network namespace, else it is the
    loopback relay; both add the RTT, pace to the rate and can be cut."""
    running = SiteAndCloud(
        tmp_path_factory.mktemp("sites"),
        WAN_RTT_MS,
        WAN_BPS,
        sites=(SITE, OTHER_SITE),
        devices=DEVICES,
        shaped=True,
    )
    try:
        yield running
    finally:
        running.close()


def _client(broker: Broker, user: str, client_id: str | None = None) -> MqttClient:
    client = MqttClient(broker.user_settings(user).connection(client_id or user))
    client.connect()
    return client


def _connects(client: MqttClient) -> bool:
    try:
        client.connect(timeout=2)
    except BrokerError:
        return False
    return True


def _bridge_up(sites: SiteAndCloud) -> None:
    states: queue.Queue = queue.Queue()
    watcher = _client(sites.site, "monitor", "bridge-watch")
    try:
        watcher.subscribe(bridge_state(SITE), lambda m: states.put(m.payload), qos=0)
        eventually(lambda: not states.empty() and states.queue[-1] == b"1", "the bridge up", 15)
    finally:
        watcher.close()


def test_the_bridge_carries_the_contract_and_no_more(sites: SiteAndCloud) -> None:
    """Only the contract's topics cross, each one way, the site's tree mapped to its own.
    Each sender ends with a message that crosses: one client's messages arrive in order,
    so when it is heard, anything sent before it that crossed is heard too."""
    _bridge_up(sites)
    site_tree = T.at_site(SITE)
    up: queue.Queue = queue.Queue()
    down: queue.Queue = queue.Queue()
    cloud_mon = _client(sites.cloud, "monitor", "mon-cloud")
    site_mon = _client(sites.site, "monitor", "mon-site")
    device = _client(sites.site, "cam1")
    planner = _client(sites.site, "planner", "pl-x")
    cloud = _client(sites.cloud, "cloud", "cloud-x")
    try:
        cloud_mon.subscribe(f"{T.prefix}/#", up.put, qos=1)
        site_mon.subscribe(f"{T.prefix}/#", down.put, qos=1)
        device.publish(T.result("cam1"), b"{}", qos=1, wait=5)  # a device's own: stays
        device.publish(T.telemetry("device", "cam1"), b"{}", qos=1, wait=5)
        planner.publish(T.plan("cam1", MODEL), b"{}", qos=1, wait=5)  # plans stay here
        planner.publish(T.telemetry("planner", "pl-x"), b"{}", qos=1, wait=5)
        heard_up = _until(
            up, [site_tree.telemetry("device", "cam1"), site_tree.telemetry("planner", "pl-x")]
        )
        with pytest.raises(BrokerError, match="Not authorized"):  # nobody plans a site there
            cloud.publish(site_tree.plan("cam1", MODEL), b"{}", qos=1, wait=5)
        cloud.publish(T.result("cam1"), b"{}", qos=1, wait=5)  # the cloud's own tree: stays
        cloud.publish(T.telemetry("cloud", "cloud-x"), b"{}", qos=1, wait=5)
        cloud.publish(site_tree.result("cam1"), b"{}", qos=1, wait=5)
        heard_down = _until(down, [T.telemetry("cloud", "cloud-x"), T.result("cam1")])
    finally:
        for c in (cloud_mon, site_mon, device, planner, cloud):
            c.close()
    assert site_tree.result("cam1") not in heard_up  # what a device answered stays home
    assert site_tree.plan("cam1", MODEL) not in heard_up
    assert heard_down.count(T.result("cam1")) == 1  # the site's answer, not the cloud's own


def _until(inbox: queue.Queue, markers: list[str], timeout_s: float = 10.0) -> list[str]:
    """Topics heard until every one of ``markers`` was."""
    heard: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not set(markers) <= set(heard):
        heard.append(inbox.get(timeout=max(0.01, deadline - time.monotonic())).topic)
    return heard


def test_escalations_are_answered_across_the_bridge_and_the_wan_is_measured(
    sites: SiteAndCloud, real_pool: ModelPool
) -> None:
    mv = real_pool.get(MODEL)
    pool = {"pool": real_pool.root}
    digits = mnist_digits()[0][:20]
    plan = make_plan(mv, 0, "raw", "edge", cloud_cut=mv.last_cut - 1)
    _bridge_up(sites)
    edge_cfg = sites.site.user_settings("edge", site=SITE, **pool)
    with (
        Worker(sites.cloud.user_settings("cloud", **pool), "cloud", "cloud-w1"),
        edge_worker(edge_cfg, "north-edge", threads=1) as edge,
        Device(sites.site.user_settings("cam1", **pool), "cam1", plan, timeout_s=10) as dev,
    ):
        answers = [dev.infer(d) for d in digits]
        assert edge.wan is not None
        probes = edge.wan.estimates
        # a median of 3 pairs, sent every 2 s (a pair nobody answered is no sample)
        eventually(lambda: probes.rate_samples() >= 3, "3 WAN probes", 30)
        wan = edge.wan.estimate()
    with Device(sites.site.user_settings("cam1", **pool), "cam1", local_plan(mv)) as dev:
        unsplit = [dev.infer(d).top[0].index for d in digits]
    assert [a.tier for a in answers] == ["cloud"] * len(digits)
    assert [a.top[0].index for a in answers] == unsplit
    assert wan is not None and wan.rtt_ms is not None
    assert WAN_RTT_MS <= wan.rtt_ms <= WAN_RTT_MS + 60, wan
    assert wan.uplink_bps is not None
    # tc paces in the kernel; the loopback relay is threads of this busy test process
    low = 0.7 if sites.shaped else 0.3
    assert low * WAN_BPS <= wan.uplink_bps <= 1.3 * WAN_BPS, wan


def test_a_wan_outage_loses_nothing_and_plans_move_away_and_back(
    sites: SiteAndCloud, real_pool: ModelPool
) -> None:
    """Streaming from a slow device with a slow edge, the cloud is the plan; a 10 s WAN
    outage moves the device off the cloud within 2 s and back once the WAN returns, and
    every request ends as an answer or a visible failure.

    Meanwhile an edge floods the WAN with 1,200 probes of 1 kB (QoS 1): the bridge is
    one client of the site broker, so what goes up queues for it, up to
    ``max_queued_messages`` (1000); the rest is dropped, counted by mosquitto every 10 s,
    and reported by the site's planner (metric, log), which also says the WAN is down."""
    mv = real_pool.get(MODEL)
    digits = mnist_digits()[0][:50]
    _bridge_up(sites)
    futures: list[Future] = []
    stop = threading.Event()
    with ExitStack() as stack:
        planner, dev = sites.offloading(stack, real_pool.root, mv, "cam2", "outage")

        def on_cloud() -> bool:
            return "cloud" in dev.plan.tiers

        def stream() -> None:
            while not stop.is_set():
                futures.append(dev.submit(digits[len(futures) % len(digits)]))

        streaming = threading.Thread(target=stream, daemon=True)
        streaming.start()
        try:
            eventually(on_cloud, "the device planned onto the cloud", 40)
            before = len(futures)
            cut_at = time.monotonic()
            sites.wan.cut()
            eventually(lambda: not on_cloud(), "the device off the cloud", 5)
            moved_off = time.monotonic() - cut_at
            registry = planner.metrics.registry
            assert registry.get_sample_value("splitmq_planner_wan_up") == 0
            dropped_before = planner.broker_dropped or 0  # since the broker started
            flood = _client(sites.site, "edge", "edge-flood")
            for _ in range(1200):  # no cloud takes them now; nobody answers them after
                flood.publish(T.ping("edge-flood"), bytes(1000), qos=1)
            flood.publish(T.telemetry("edge", "edge-flood"), b"{}", qos=1, wait=10)  # all in
            flood.close()
            dropped = eventually(  # mosquitto says its count every 10 s
                lambda: (planner.broker_dropped or 0) - dropped_before >= 100,
                "the drops counted",
                15,
            )
            assert (
                dropped
                and registry.get_sample_value("splitmq_broker_dropped_messages_total")
                == planner.broker_dropped
            )
            time.sleep(max(0.0, 10.0 - (time.monotonic() - cut_at)))  # the outage lasts 10 s
            during = slice(before, len(futures))
            sites.wan.restore()
            back_at = time.monotonic()
            eventually(on_cloud, "the device back on the cloud", 30)
            moved_back = time.monotonic() - back_at
            assert planner.wan.up is True
        finally:
            sites.wan.restore()
            stop.set()
            streaming.join()
        outcomes = [f.exception(timeout=30) for f in futures]
    failed = [e for e in outcomes if e is not None]
    assert moved_off <= 2.0, f"moved off the cloud {moved_off:.2f} s after the WAN went"
    assert None in outcomes[during], "the device kept answering during the outage"
    assert moved_back < 30
    assert len(failed) <= 4, failed  # at most the window in flight as the WAN went
    assert 100 <= (planner.broker_dropped or 0) - dropped_before <= 300  # 1,000 queued


def test_a_site_can_neither_read_nor_forge_another_sites_traffic(sites: SiteAndCloud) -> None:
    """South's bridge login on the cloud broker: it may not subscribe to north's results
    or errors, is not dealt them, and what it publishes into north's tree reaches no one.
    South's own traffic, sent after, is the marker that the rest would have come by now."""
    north, south_tree = T.at_site(SITE), T.at_site(OTHER_SITE)
    heard: queue.Queue = queue.Queue()
    served: queue.Queue = queue.Queue()
    south = _client(sites.cloud, OTHER_SITE)
    cloud = _client(sites.cloud, "cloud", "cloud-y")
    try:
        for filt in (north.filters().result("+"), north.filters().error("+"), "#"):
            with pytest.raises(BrokerError, match="Not authorized"):
                south.subscribe(filt, heard.put, qos=1)
        south.subscribe(south_tree.filters().result("+"), heard.put, qos=1)
        cloud.subscribe(T.filters().at_site("+").cloud_requests_shared(), served.put, qos=1)
        cloud.publish(north.result("cam1"), b"{}", qos=1, wait=5)
        cloud.publish(south_tree.result("cam1"), b"{}", qos=1, wait=5)
        for tree in (north, south_tree):  # forged, then its own
            south.publish(tree.request("cloud", MODEL, 0, "cam1"), b"x", qos=1)
        assert heard.get(timeout=10).topic == south_tree.result("cam1")
        assert served.get(timeout=10).topic == south_tree.request("cloud", MODEL, 0, "cam1")
    finally:
        south.close()
        cloud.close()
    assert heard.empty() and served.empty()


def test_only_the_planner_reads_the_bridge_state_and_only_edges_probe(
    sites: SiteAndCloud,
) -> None:
    """The new topics' ACL lines at the site: the planner reads the bridge state and an
    edge pings and reads answers; a device may do neither."""
    device = _client(sites.site, "cam1", "cam1")
    planner = _client(sites.site, "planner", "pl-acl")
    edge = _client(sites.site, "edge", "edge-acl")
    any_edge = T.filters()
    try:
        for filt in (bridge_state(SITE), any_edge.pong("+"), any_edge.ping("+")):
            with pytest.raises(BrokerError, match="Not authorized"):
                device.subscribe(filt, lambda m: None, qos=1)
        with pytest.raises(BrokerError, match="Not authorized"):
            device.publish(T.ping("cam1"), b"", qos=1, wait=5)
        planner.subscribe(bridge_state(SITE), lambda m: None, qos=0)
        edge.subscribe(any_edge.pong("+"), lambda m: None, qos=0)
        edge.publish(T.ping("edge-acl"), b"", qos=1, wait=5)
    finally:
        for c in (device, planner, edge):
            c.close()


def test_the_cli_adds_a_site_and_runs_its_bridged_broker(
    sites: SiteAndCloud, tmp_path: Path
) -> None:
    """`splitmq secure add-site` on the cloud's directory, then `splitmq broker --site`
    with its login at the site: a bridge that comes up; and its mistakes, one line each."""
    env = cli_env()
    added = run_cli(
        "secure",
        "add-site",
        "east",
        "--dir",
        str(sites.cloud_dir.root),
        "--broker",
        sites.cloud.tls_url,
        "--json",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["live"]["added"] is True  # the running cloud took it
    login = sites.cloud_dir.client_env("east")
    url = f"mqtts://{sites.wan.host}:{sites.wan.port}"
    for args, why in (
        (["--site", "east"], "needs --site NAME and --bridge-login FILE"),
        (["--site", "west", "--bridge-login", str(login)], "not of site 'west'"),
        (
            ["--site", "east", "--bridge-login", str(login), "--bridge", "mqtt://h:1883"],
            "use mqtts://",
        ),
    ):
        refused = run_cli("broker", *args, env=env)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
    east = SecureDir.init(tmp_path / "east")
    port, tls = free_port(), free_port()
    data = Path(tempfile.mkdtemp(prefix="splitmq-east-"))  # mosquitto's user reaches /tmp
    args = (
        f"broker --secure {east.root} --port {port} --tls-port {tls} --data-dir {data} "
        f"--site east --bridge {url} --bridge-login {login}"
    )
    broker = subprocess.Popen(
        [sys.executable, "-m", "splitmq", *args.split()],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        planner = east.settings("planner", f"mqtts://127.0.0.1:{tls}").connection("pl-east")
        client = MqttClient(planner)
        states: queue.Queue = queue.Queue()
        eventually(lambda: _connects(client) or broker.poll() is not None, "the broker up", 15)
        assert broker.poll() is None, broker.communicate()[1]
        client.subscribe(bridge_state("east"), lambda m: states.put(m.payload), qos=0)
        eventually(lambda: b"1" in list(states.queue), "east's bridge up", 15)
        client.close()
    finally:
        broker.terminate()
        broker.communicate(timeout=15)
        shutil.rmtree(data, ignore_errors=True)
    assert broker.returncode == 0  # a clean stop
