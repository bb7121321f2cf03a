"""LeanPaho's own read of PUBLISH and PUBACK gives what paho's gives, and leaves the rest to it."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit import Inbox
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from splitmq.device.flights import Window
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.settings import Settings
from splitmq.shared.transport.lean import read_publish
from splitmq.shared.transport.mqtt import MqttClient

CHOICES = {
    "CorrelationData": (None, b"", bytes(range(256))),
    "ResponseTopic": (None, "splitmq/v1/result/cam-1", "ré/" + "x" * 200),
    "ContentType": (None, "application/json"),
    "MessageExpiryInterval": (None, 1, 2**32 - 1),
    "PayloadFormatIndicator": (None, 0, 1),
    "SubscriptionIdentifier": (None, 1, 268_435_455),
}
TOPICS = ("a/b", "splitmq/v1/edge/mnist-cnn/10/ré-1")
PAYLOADS = (b"", b"\x00\x01" * 300)


def _publish(topic: str, mid: int, qos: int, props: Properties, payload: bytes) -> bytes:
    """A PUBLISH's bytes after its fixed header, packed as paho packs its own."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + (struct.pack("!H", mid) if qos else b"")
    return body + props.pack() + payload


def _props(values: dict[str, object]) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        if value is not None:
            setattr(props, name, value)
    return props


@pytest.mark.parametrize("values", list(itertools.product(*CHOICES.values())))
def test_a_publish_reads_as_paho_reads_it(values: tuple) -> None:
    props = _props(dict(zip(CHOICES, values, strict=True)))
    for topic, payload, qos, retain in itertools.product(TOPICS, PAYLOADS, (0, 1), (0, 1)):
        header = 0x30 | qos << 1 | retain
        packet = _publish(topic, 4242, qos, props, payload)
        ours = read_publish(header, bytearray(packet))
        theirs = _packet.decode_publish(header, bytearray(packet), MQTTProtocolVersion.MQTTv5)
        assert ours is not None
        assert (ours.topic, ours.payload, ours.qos, ours.retain) == (
            theirs.topic.decode(),
            theirs.payload,
            theirs.qos,
            theirs.retain,
        )
        assert ours.mid == theirs.mid
        for name in CHOICES:
            assert getattr(ours.properties, name, None) == getattr(theirs.properties, name, None)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(_publish("a", 1, 1, _props({"UserProperty": ("k", "v")}), b"x"), id="user"),
        pytest.param(_publish("a", 1, 1, _props({"TopicAlias": 3}), b"x"), id="alias"),
        pytest.param(b"\x00\x01a\x00\x01\x04\x01\x01\x01\x01", id="a property twice"),
        pytest.param(b"\x00\x01a\x00\x01\x05\x09\x00\x09ab", id="binary past the properties"),
        pytest.param(b"\x00\x01a\x00\x01\x80\x80\x80\x80\x01", id="a 5-byte length"),
        pytest.param(b"\x00\x09a", id="a topic past the packet"),
        pytest.param(b"\x00\x02\xff\xfe\x00\x01\x00", id="a topic not UTF-8"),
        pytest.param(b"\x00\x01a\x00\x01\x03\x03\x00\x01", id="text cut short"),
        pytest.param(b"\x00\x01a\x00\x01\x02\x0b\x00", id="subscription id 0"),
        pytest.param(b"\x00\x01a\x00\x01\x01\x01", id="a byte past the packet"),
        pytest.param(b"\x00\x01a\x00\x01\x02\x01\x02", id="a payload format of 2"),
        pytest.param(b"\x00\x01a\x00\x01\x04\x03\x00\x01\x00", id="a NUL in text"),
        pytest.param(b"\x00\x01a\x00\x01\x06\x08\x00\x03\xef\xbb\xbf", id="a BOM in text"),
        pytest.param(b"\x00\x01a\x00\x01\x01\x01x", id="a byte past the properties"),
        pytest.param(b"\x00\x01a\x00\x01\x02\x02\x00", id="an int cut short"),
    ],
)
def test_what_it_does_not_read_is_left_to_paho(packet: bytes) -> None:
    assert read_publish(0x32, bytearray(packet)) is None


@given(st.integers(0x30, 0x3F), st.binary(max_size=80))
def test_any_bytes_are_read_or_left_to_paho_never_raise(header: int, packet: bytes) -> None:
    """What the broker sends is the network's: a bad packet is paho's to refuse."""
    got = read_publish(header, bytearray(packet))
    assert got is None or got.payload == packet[len(packet) - len(got.payload) :]


def test_qos_2_is_left_to_paho() -> None:
    packet = _publish("a", 1, 2, _props({}), b"x")
    assert read_publish(0x34, bytearray(packet)) is None


def test_a_message_with_user_properties_still_arrives(
    settings: Settings, topics: Topics, make_client: Callable[..., MqttClient]
) -> None:
    """Through paho's way, the fallback: a plain paho client sends user properties."""
    ours, box = make_client("lean"), Inbox()
    ours.subscribe(topics.result("cam-1"), box)
    theirs = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    theirs.connect(settings.broker_url.host, settings.broker_url.port)
    theirs.loop_start()
    try:
        props = _props({"UserProperty": ("k", "v"), "CorrelationData": b"r-1"})
        theirs.publish(topics.result("cam-1"), b"{}", qos=1, properties=props).wait_for_publish(5)
        (got,) = box.wait(1)
        assert (got.payload, got.correlation_data) == (b"{}", b"r-1")
    finally:
        theirs.loop_stop()
        theirs.disconnect()


def test_a_queue_shorter_than_the_slack_is_the_pipeline_not_an_overload() -> None:
    """A tiny hop answers in about 1.5 ms: a pipeline of 32 waits about 10 ms, 6x that,
    and still grows; a wait past the slack halves it once."""
    w = Window(32, recent=4096)  # the 1.5 ms answer stays the least
    w.acquire()
    w.release(0.0015)
    for _ in range(1000):  # +1 per window's worth: 4 -> 32 takes about 500
        w.acquire()
        w.release(0.010)
    assert w.size == 32
    w.acquire()
    w.release(0.0015 + Window.SLACK_S + 0.005)
    assert w.size == 16
