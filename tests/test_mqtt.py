"""MqttClient against a real mosquitto: properties, limits, reconnects, shares, wills, acks."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kit import Inbox

from splitmq.broker.launcher import DEFAULT_CONFIG, Broker, free_port
from splitmq.shared.errors import BrokerError, PayloadTooLarge, WireError
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import JSON_CONTENT_TYPE, Message, MqttClient, Will

MakeClient = Callable[..., MqttClient]


def test_round_trip_keeps_v5_properties(make_client: MakeClient, topics: Topics) -> None:
    device, box = make_client("dev"), Inbox()
    device.subscribe(topics.result("cam-1"), box)
    worker = make_client("worker")
    worker.publish(
        topics.result("cam-1"),
        b"\x00\x01raw",
        correlation_data=b"req-42",
        response_topic=topics.error("cam-1"),
        content_type="application/x-msgpack",
        expiry_s=29.2,
        wait=5,
    )
    worker.publish_json(topics.result("cam-1"), {"label": "cat", "p": 0.9}, wait=5)
    raw, js = box.wait(2)
    assert (raw.payload, raw.qos, raw.retain) == (b"\x00\x01raw", 1, False)
    assert raw.correlation_data == b"req-42"
    assert raw.response_topic == topics.error("cam-1")
    assert raw.content_type == "application/x-msgpack"
    assert raw.expiry_interval is not None and 28 <= raw.expiry_interval <= 30
    assert raw.payload_format_indicator is None
    assert js.json() == {"label": "cat", "p": 0.9}
    assert (js.payload_format_indicator, js.content_type) == (1, JSON_CONTENT_TYPE)


def test_non_json_payload_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="not JSON"):
        Message("t", b"\xff").json()


def test_nan_is_refused_before_publishing(make_client: MakeClient, topics: Topics) -> None:
    with pytest.raises(WireError, match="JSON"):
        make_client().publish_json(topics.result("d"), {"p": float("nan")})


def test_tcp_nodelay_is_set(make_client: MakeClient) -> None:
    sock = make_client()._paho.socket()
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_oversized_payload_raises_and_client_stays_usable(
    make_client: MakeClient, settings: Settings, topics: Topics
) -> None:
    small = settings.model_copy(update={"max_payload_bytes": 1024})
    client, box = make_client(settings=small), Inbox()
    client.subscribe(topics.result("d"), box)
    with pytest.raises(PayloadTooLarge, match=r"2,000 bytes .* exceeds max_payload_bytes=1,024"):
        client.publish(topics.result("d"), b"x" * 2000, wait=5)
    assert client.connected
    client.publish(topics.result("d"), b"x" * 1024, wait=5)
    assert box.wait(1)[0].payload == b"x" * 1024


@pytest.fixture
def tiny_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker whose max_packet_size is 4 KiB, to test the limit announced in CONNACK."""
    config = tmp_path / "tiny.conf"
    config.write_text(
        DEFAULT_CONFIG.read_text().replace("max_packet_size 67174400", "max_packet_size 4096")
    )
    with Broker(config=config) as broker:
        yield broker


def test_broker_packet_limit_is_checked_before_sending(tiny_broker: Broker) -> None:
    with MqttClient(tiny_broker.settings().connection()) as client:
        assert client.broker_max_packet == 4096
        with pytest.raises(PayloadTooLarge, match="broker's maximum packet size of 4,096"):
            client.publish("t/big", b"x" * 4090)
        assert client.connected
        client.publish("t/small", b"x" * 4000, wait=5)


def test_connect_to_nothing_is_a_broker_error() -> None:
    with pytest.raises(BrokerError, match="cannot connect to the MQTT broker"):
        MqttClient.at("127.0.0.1", free_port()).connect(timeout=2)


def test_failing_handler_does_not_stop_delivery(make_client: MakeClient, topics: Topics) -> None:
    box = Inbox()

    def handler(message: Message) -> None:
        box(message)
        raise RuntimeError("boom")  # would kill paho's loop if not caught

    sub = make_client()
    sub.subscribe(topics.error("d"), handler)
    pub = make_client()
    pub.publish(topics.error("d"), b"1", wait=5)
    pub.publish(topics.error("d"), b"2", wait=5)
    assert [m.payload for m in box.wait(2)] == [b"1", b"2"]


def test_waiting_inside_a_handler_is_refused(make_client: MakeClient, topics: Topics) -> None:
    errors = Inbox()
    client = make_client()

    def handler(message: Message) -> None:
        try:
            client.publish(topics.result("d"), b"reply", wait=1)
        except BrokerError as exc:
            errors(exc)

    client.subscribe(topics.error("d"), handler)
    make_client().publish(topics.error("d"), b"go", wait=5)
    assert "network thread" in str(errors.wait(1)[0])


def test_reconnect_restores_plain_and_shared_subscriptions(broker_dir: Path) -> None:
    topics = Topics("test/reconnect/splitmq/v1")
    plan, request = topics.plan("d", "m"), topics.edge_request("m", 1, "d")
    plans, requests = Inbox(), Inbox()
    with Broker(data_dir=broker_dir) as broker:
        settings = broker.settings()
        with MqttClient(settings.connection("planner")) as planner:
            planner.publish_json(plan, {"cut": 1}, retain=True, wait=5)
        with MqttClient(settings.connection("dev"), reconnect_delay=(0.05, 0.5)) as client:
            client.subscribe(topics.edge_requests_shared(), requests)
            client.subscribe(plan, plans)  # subscribed after the share, restored after it
            assert plans.wait(1)[0].retain

            broker.restart()  # same port, same data dir: the retained plan survives

            again = plans.wait(2)[1]  # redelivered by the restored subscription
            assert again.json() == {"cut": 1} and again.retain
            assert client.connected
            with MqttClient(settings.connection("sender")) as sender:
                sender.publish(request, b"after restart", wait=5)
            assert requests.wait(1)[0].payload == b"after restart"


def test_shared_subscription_splits_the_load(make_client: MakeClient, topics: Topics) -> None:
    box = Inbox("requests and markers at the workers")
    marker = topics.telemetry("device", "marker")  # a plain topic: both workers get it
    for name in ("w1", "w2"):
        worker = make_client(name)
        worker.subscribe(topics.edge_requests_shared(), lambda m, name=name: box((name, m.payload)))
        worker.subscribe(marker, lambda m, name=name: box((name, m.payload)))
    device = make_client("cam")
    for i in range(10):
        device.publish(topics.edge_request("m", 3, "cam"), str(i).encode(), wait=5)
    # The broker routes a client's messages in the order it sent them and delivers each
    # session's in that order: a second copy of a request would come before the marker.
    device.publish(marker, b"marker", wait=5)
    got = box.wait(12)  # the 10 requests, and the marker at each worker
    for name in ("w1", "w2"):
        assert [p for n, p in got if n == name][-1] == b"marker", got
    requests = [(name, p) for name, p in got if p != b"marker"]
    assert sorted(int(p) for _, p in requests) == list(range(10))  # each to exactly one worker
    assert {name for name, _ in requests} == {"w1", "w2"}


DYING_CLIENT = textwrap.dedent(
    """
    import sys
    from splitmq.shared.transport.mqtt import MqttClient, Will
    client = MqttClient.at("127.0.0.1", int(sys.argv[1]), "dying", will=Will(sys.argv[2]))
    client.connect(timeout=5)
    client.publish_json(sys.argv[2], {"status": "online"}, retain=True, wait=5)
    print("ready", flush=True)
    sys.stdin.read()  # until killed
    """
)


def test_will_is_published_retained_when_a_client_dies(
    broker: Broker, make_client: MakeClient, topics: Topics
) -> None:
    status, box = topics.telemetry("edge", "e1"), Inbox()
    make_client("planner").subscribe(status, box)
    with subprocess.Popen(
        [sys.executable, "-c", DYING_CLIENT, str(broker.port), status],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            assert box.wait(1)[0].json() == {"status": "online"}
        finally:
            proc.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
    assert box.wait(2)[1].json() == {"status": "offline"}
    late = Inbox()
    make_client("late").subscribe(status, late)
    first = late.wait(1)[0]
    assert first.retain and first.json() == {"status": "offline"}


def test_clean_close_publishes_the_offline_status(make_client: MakeClient, topics: Topics) -> None:
    status, box = topics.telemetry("cloud", "c1"), Inbox()
    make_client().subscribe(status, box)
    worker = make_client(will=Will(status))
    worker.publish_json(status, {"status": "online"}, retain=True, wait=5)
    worker.close()
    assert [m.json()["status"] for m in box.wait(2)] == ["online", "offline"]


def test_manual_ack_with_receive_maximum_one_holds_the_next_message(
    make_client: MakeClient, topics: Topics
) -> None:
    box = Inbox("requests and markers at the worker")
    worker = make_client("worker", manual_ack=True, receive_maximum=1)
    worker.subscribe(topics.edge_requests_shared(), box)
    # Receive Maximum counts only QoS 1 and 2: a QoS 0 marker routed after the requests
    # still reaches the worker, behind any request the broker did not hold back.
    marker = topics.telemetry("device", "marker")
    worker.subscribe(marker, box, qos=0)
    device = make_client("cam")
    for i in range(3):
        device.publish(topics.edge_request("m", 0, "cam"), bytes([i]), wait=5)

    def arrived_after_a_marker(count: int) -> list[bytes]:
        """The payloads once a marker sent now is in: what the broker let through."""
        device.publish(marker, b"marker", wait=5)
        return [m.payload for m in box.wait(count)]

    assert arrived_after_a_marker(2) == [b"\x00", b"marker"]  # #2 held until #1 is acked
    first = box.items[0]
    first.ack()
    first.ack()  # idempotent: must not ack a later message with the same id
    second = box.wait(3)[2]
    assert second.payload == b"\x01"
    assert arrived_after_a_marker(4)[3] == b"marker"  # #3 held until #2 is acked
    second.ack()
    payloads = [m.payload for m in box.wait(5)]
    assert payloads == [b"\x00", b"marker", b"\x01", b"marker", b"\x02"]


def test_two_clients_with_one_id_are_told_and_back_off(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto closes the older of two connections with one client id, without a
    reason: the two would take the id from each other several times a second."""
    from kit import eventually

    caplog.set_level(logging.WARNING, logger="splitmq.shared.transport.mqtt")
    first = MqttClient.at(broker.host, broker.port, "twin").connect(timeout=5)
    second = MqttClient.at(broker.host, broker.port, "twin").connect(timeout=5)
    try:
        said = eventually(
            lambda: [r for r in caplog.records if r.levelno == logging.ERROR],
            "a client to say another has its id",
            timeout=30,
        )
    finally:
        first.close()
        second.close()
    message = said[0].getMessage()
    assert message.startswith("twin: the broker ended its last 5 connections within 1 s each")
    assert "another client is likely connected with client id 'twin'" in message
