"""paho's client with a lean read of the two packets every request brings: PUBLISH and PUBACK.

paho turns each PUBLISH's v5 properties into a ``Properties`` (a table scan and
a string replace per property) inside an ``MQTTMessage``, and each PUBACK into
a ``ReasonCode`` and an empty ``Properties``: about a sixth of a device's CPU on
a tiny hop (docs/benchmarks.md). ``LeanPaho`` reads what splitmq's messages
carry straight from the bytes. Whatever it does not expect (QoS 2, a property
it does not read, such as user properties, a malformed packet, a PUBACK with
properties) goes paho's own way, so only the cost changes.
"""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: The PUBLISH properties read here (MQTT 5, 3.3.2.3): identifier, name, kind.
_BYTE, _INT4, _TEXT, _BINARY, _VARINT = range(5)
_READ = {
    1: ("PayloadFormatIndicator", _BYTE),
    2: ("MessageExpiryInterval", _INT4),
    3: ("ContentType", _TEXT),
    8: ("ResponseTopic", _TEXT),
    9: ("CorrelationData", _BINARY),
    11: ("SubscriptionIdentifier", _VARINT),
}
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!L")


class ReceivedProperties:
    """The properties of a received PUBLISH, as paho names them; absent ones are not set
    (``getattr(props, name, None)`` reads both this and paho's ``Properties``)."""

    __slots__ = tuple(name for name, _ in _READ.values())

    def __repr__(self) -> str:
        set_ = {name: getattr(self, name) for name in self.__slots__ if hasattr(self, name)}
        return f"ReceivedProperties({set_})"


class Received:
    """A received PUBLISH: what ``MQTTMessage`` offers that splitmq reads."""

    __slots__ = ("mid", "payload", "properties", "qos", "retain", "topic")

    def __init__(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, props: Any
    ) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.mid, self.properties = mid, props


#: What ``on_message`` gets: the lean read, or paho's message where paho read it.
Incoming = Received | paho.MQTTMessage


def read_publish(header: int, packet: bytes | bytearray) -> Received | None:
    """A QoS 0 or 1 MQTT 5 PUBLISH (``packet``: after the fixed header); None when it is
    anything else, or anything but the properties read here, left to paho."""
    qos = (header & 0x06) >> 1
    if qos > 1:
        return None
    size = len(packet)
    if size < 2:
        return None
    end = 2 + _U16.unpack_from(packet, 0)[0]
    if end > size:
        return None
    try:
        topic = packet[2:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = 0
    if qos:
        if end + 2 > size:
            return None
        mid = _U16.unpack_from(packet, end)[0]
        end += 2
    got = read_properties(packet, end)
    if got is None:
        return None
    props, start = got
    payload = bytes(packet[start:])
    return Received(topic, payload, qos, bool(header & 0x01), mid, props)


def read_properties(packet: bytes | bytearray, pos: int) -> tuple[ReceivedProperties, int] | None:
    """The properties at ``pos`` and where the payload starts; None: not only those read
    here, each at most once (but subscription identifiers), or malformed."""
    length, pos = _varint(packet, pos)
    end = pos + length
    if length < 0 or end > len(packet):
        return None
    props = ReceivedProperties()
    seen: set[int] = set()
    while pos < end:
        ident = packet[pos]
        pos += 1
        known = _READ.get(ident)
        if known is None or (ident in seen and ident != 11):
            return None
        seen.add(ident)
        name, kind = known
        value: Any
        if kind == _BYTE:
            if pos >= end or packet[pos] > 1:  # the payload format is 0 or 1
                return None
            value, pos = packet[pos], pos + 1
        elif kind == _INT4:
            if pos + 4 > end:
                return None
            value, pos = _U32.unpack_from(packet, pos)[0], pos + 4
        elif kind == _VARINT:
            value, pos = _varint(packet, pos)
            if value <= 0:
                return None
            value = [*getattr(props, name, ()), value]
        else:
            if pos + 2 > end:
                return None
            stop = pos + 2 + _U16.unpack_from(packet, pos)[0]
            if stop > end:
                return None
            raw = bytes(packet[pos + 2 : stop])
            pos = stop
            if kind == _TEXT:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    return None
                if "\x00" in value or "\ufeff" in value:  # what paho refuses too
                    return None
            else:
                value = raw
        setattr(props, name, value)
    if pos != end:
        return None
    return props, end


def _varint(packet: bytes | bytearray, pos: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``pos`` and the position after it; (-1, pos) if
    it runs past the packet or over 4 bytes."""
    value, shift = 0, 0
    for _ in range(4):
        if pos >= len(packet):
            return -1, pos
        byte = packet[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def _puback_reasons() -> dict[int, ReasonCode]:
    """One shared ``ReasonCode`` per PUBACK reason: read them, never ``set`` or ``unpack``
    one (``MqttClient`` only reads ``value``, ``is_failure`` and ``str``)."""
    reasons = {}
    for value in range(256):
        try:
            reasons[value] = ReasonCode(PacketTypes.PUBACK, identifier=value)
        except (KeyError, ValueError):  # not a PUBACK reason: paho's way reports it
            continue
    return reasons


_PUBACK_REASONS = _puback_reasons()
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


class LeanPaho(paho.Client):
    """A paho client reading PUBLISH and PUBACK the lean way (see module docstring).
    Every message goes to ``on_message``: per-topic callbacks (``message_callback_add``)
    are not supported."""

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("LeanPaho hands every message to on_message")

    def _handle_publish(self) -> MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        got = None
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            got = read_publish(header, packet)
        if got is None:
            return super()._handle_publish()
        self._easy_log(
            paho.MQTT_LOG_DEBUG,
            "Received PUBLISH (q%d, r%d, m%d), '%s', properties=%s, ...  (%d bytes)",
            *(got.qos, got.retain, got.mid, got.topic, got.properties, len(got.payload)),
        )
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, got)  # type: ignore[arg-type]
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if got.qos and not self._manual_ack:
            return self._send_puback(got.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        # mid, reason code, no properties (MQTT 5, 3.4.2): anything else the paho way
        lean = cmd == "PUBACK" and self._protocol == MQTTProtocolVersion.MQTTv5
        if not lean or not 2 <= size <= 4 or (size == 4 and packet[3] != 0):
            return super()._handle_pubackcomp(cmd)
        reason = _PUBACK_REASONS.get(packet[2] if size > 2 else 0)
        if reason is None:
            return super()._handle_pubackcomp(cmd)
        mid = _U16.unpack_from(packet, 0)[0]
        self._easy_log(paho.MQTT_LOG_DEBUG, "Received PUBACK (Mid: %d)", mid)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
