"""The values the MQTT client hands out and the packet helpers it uses.

Split from ``mqtt`` so the client module holds only the connection logic;
nothing outside ``splitmq.shared.transport`` imports paho.
"""

from __future__ import annotations

import json as jsonlib
import math
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from splitmq.shared.errors import PayloadTooLarge, WireError
from splitmq.shared.protocol.ids import is_id
from splitmq.shared.transport.lean import Incoming

JSON_CONTENT_TYPE = "application/json"


def noop() -> None:
    """The ``ack`` of a message that needs none (QoS 0, or automatic acks)."""


@dataclass(frozen=True, slots=True)
class Message:
    """A received message, free of paho types. ``ack()`` releases a manual-ack slot."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    correlation_data: bytes | None = None
    response_topic: str | None = None
    content_type: str | None = None
    expiry_interval: int | None = None
    payload_format_indicator: int | None = None
    ack: Callable[[], None] = field(default=noop, repr=False, compare=False)

    def correlation_id(self) -> str | None:
        """The request id in the MQTT correlation data, if it is a valid id."""
        try:
            cid = (self.correlation_data or b"").decode()
        except UnicodeDecodeError:
            return None
        return cid if is_id(cid) else None

    def json(self) -> Any:
        """The payload decoded as JSON; WireError if it is not."""
        try:
            return jsonlib.loads(self.payload)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise WireError(f"payload on {self.topic!r} is not JSON: {exc}") from exc


Handler = Callable[[Message], None]


@dataclass(frozen=True, slots=True)
class Will:
    """Presence: the broker publishes ``payload`` to ``topic`` if the client dies.

    :meth:`MqttClient.close` publishes the same payload itself, so a clean
    shutdown and a crash look alike to subscribers.
    """

    topic: str
    payload: Mapping[str, Any] = field(default_factory=lambda: {"status": "offline"})
    retain: bool = True
    qos: int = 1


class Once:
    """True the first time only: acking twice could ack a later message with the same mid."""

    __slots__ = ("_lock", "_taken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = False

    def take(self) -> bool:
        with self._lock:
            taken, self._taken = self._taken, True
            return not taken


def json_payload(topic: str, obj: Any, packet_type: int) -> tuple[bytes, Properties]:
    try:
        text = jsonlib.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WireError(f"cannot encode the JSON payload for {topic!r}: {exc}") from exc
    props = Properties(packet_type)
    props.PayloadFormatIndicator = 1
    props.ContentType = JSON_CONTENT_TYPE
    return text.encode(), props


_PAHO_TABLES = Properties(PacketTypes.PUBLISH)


class PublishProperties(Properties):
    """The v5 properties of a PUBLISH, packed once, to exactly the bytes paho packs.

    paho builds its lookup tables for every ``Properties`` and scans them for every
    attribute set and packed: about 45 µs per publish, on both sides of every hop
    (a twentieth of a tiny hop's CPU). This one shares
    one set of tables (so ``str``, ``json`` and attribute reads work as paho's do),
    packs the few properties splitmq sends in paho's order (identifier order), and is
    immutable, so the bytes packed at creation stay right for paho's resends.
    """

    packetType = PacketTypes.PUBLISH
    types = _PAHO_TABLES.types
    names = _PAHO_TABLES.names
    properties = _PAHO_TABLES.properties

    def __init__(
        self,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        content_type: str | None = None,
        expiry: int | None = None,
        utf8: bool = False,
    ) -> None:
        parts = []
        if utf8:
            object.__setattr__(self, "PayloadFormatIndicator", 1)
            parts.append(b"\x01\x01")
        if expiry is not None:
            object.__setattr__(self, "MessageExpiryInterval", expiry)
            parts.append(b"\x02" + struct.pack("!L", expiry))
        if content_type is not None:
            object.__setattr__(self, "ContentType", content_type)
            parts.append(b"\x03" + _utf8(content_type))
        if response_topic is not None:
            object.__setattr__(self, "ResponseTopic", response_topic)
            parts.append(b"\x08" + _utf8(response_topic))
        if correlation_data is not None:
            object.__setattr__(self, "CorrelationData", correlation_data)
            parts.append(b"\x09" + struct.pack("!H", len(correlation_data)) + correlation_data)
        body = b"".join(parts)
        object.__setattr__(self, "_packed", _varint(len(body)) + body)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"PublishProperties are immutable (setting {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PublishProperties are immutable (deleting {name})")

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def _utf8(text: str) -> bytes:
    """An MQTT UTF-8 string: its length in two bytes, then the bytes."""
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _varint(value: int) -> bytes:
    """An MQTT variable byte integer (the properties' length)."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish_properties(
    correlation_data: bytes | None,
    response_topic: str | None,
    content_type: str | None,
    expiry_s: float | None,
    is_json: bool,
) -> Properties:
    if content_type is not None or is_json:
        content_type = content_type or JSON_CONTENT_TYPE
    expiry = max(1, math.ceil(expiry_s)) if expiry_s is not None else None
    return PublishProperties(correlation_data, response_topic, content_type, expiry, is_json)


def packet_size(topic: str, data: bytes, props: Properties, qos: int) -> int:
    """Size of the PUBLISH packet on the wire (what the broker's limit counts)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(props.pack()) + len(data)
    limits = (128, 16384, 2097152, 268435456)
    length_bytes = next((n for n, top in enumerate(limits, 1) if remaining < top), 5)
    return 1 + length_bytes + remaining


def check_size(
    topic: str, data: bytes, props: Properties, qos: int, limit: int, broker_limit: int | None
) -> None:
    """PayloadTooLarge unless ``data`` fits our ``limit`` and the packet the broker's."""
    if len(data) > limit:
        raise PayloadTooLarge(
            f"payload of {len(data):,} bytes for {topic!r} exceeds max_payload_bytes="
            f"{limit:,}: compress it more, or raise max_payload_bytes together with "
            "max_packet_size in mosquitto.conf"
        )
    size = packet_size(topic, data, props, qos)
    if broker_limit is not None and size > broker_limit:
        raise PayloadTooLarge(
            f"a packet of {size:,} bytes for {topic!r} exceeds the broker's maximum packet "
            f"size of {broker_limit:,} bytes (max_packet_size in mosquitto.conf)"
        )


def from_paho(msg: Incoming, ack: Callable[[], None]) -> Message:
    """A paho message as a :class:`Message` (copying what the v5 properties carry)."""
    props = msg.properties
    return Message(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        correlation_data=getattr(props, "CorrelationData", None),
        response_topic=getattr(props, "ResponseTopic", None),
        content_type=getattr(props, "ContentType", None),
        expiry_interval=getattr(props, "MessageExpiryInterval", None),
        payload_format_indicator=getattr(props, "PayloadFormatIndicator", None),
        ack=ack,
    )
