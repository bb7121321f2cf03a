"""The per-request shortcuts of the device and the wire: each gives what the slow way did."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
from kit import eventually, make_request
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from splitmq.device.flights import Flight, Flights, K, Timeouts
from splitmq.shared.errors import WireError
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.transport.messages import PublishProperties, publish_properties

CHOICES = {
    "correlation_data": (None, b"", b"a" * 32, bytes(range(256))),
    "response_topic": (None, "splitmq/v1/result/cam-1", "ré/" + "x" * 200),
    "content_type": (None, "application/json", "application/x-splitmq-request+msgpack;v=1"),
    "expiry": (None, 1, 300, 2**32 - 1),
    "utf8": (False, True),
}


def _paho(
    correlation_data: bytes | None,
    response_topic: str | None,
    content_type: str | None,
    expiry: int | None,
    utf8: bool,
) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if content_type is not None:
        props.ContentType = content_type
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    if utf8:
        props.PayloadFormatIndicator = 1
    return props


@pytest.mark.parametrize("values", list(itertools.product(*CHOICES.values())))
def test_publish_properties_pack_to_the_bytes_paho_packs(values: tuple) -> None:
    ours, theirs = PublishProperties(*values), _paho(*values)
    assert ours.pack() == theirs.pack()
    assert str(ours) == str(theirs)
    assert ours.json() == theirs.json()
    for name in ("CorrelationData", "ResponseTopic", "ContentType", "MessageExpiryInterval"):
        assert getattr(ours, name, None) == getattr(theirs, name, None)


def test_publish_properties_are_what_the_client_always_set() -> None:
    ours = publish_properties(b"id", "reply/to", None, 29.2, is_json=True)
    assert ours.pack() == _paho(b"id", "reply/to", "application/json", 30, True).pack()
    ours = publish_properties(None, None, "", None, is_json=False)  # "" meant JSON too
    assert ours.pack() == _paho(None, None, "application/json", None, False).pack()
    assert publish_properties(None, None, None, None, False).pack() == b"\x00"


def test_publish_properties_are_immutable_as_paho_resends_their_bytes() -> None:
    props = PublishProperties(b"id")
    with pytest.raises(AttributeError):
        props.ResponseTopic = "late"
    assert props.pack() == _paho(b"id", None, None, None, False).pack()


def test_the_cached_p99_follows_new_answers_within_a_sixteenth_of_the_window() -> None:
    timeouts = Timeouts(100.0, floor_s=0.0, window=256)
    rng = np.random.default_rng(1)
    for seconds in rng.uniform(0.01, 0.02, 256):
        timeouts.answered(float(seconds))
    assert timeouts.base_s() == K * np.percentile(list(timeouts._recent), 99)
    for _ in range(Timeouts.STALE - 1):
        timeouts.answered(5.0)
    stale = timeouts.base_s()
    timeouts.answered(5.0)
    assert timeouts.base_s() == K * np.percentile(list(timeouts._recent), 99) > stale


def test_the_first_answers_move_the_timeout_at_once() -> None:
    timeouts = Timeouts(100.0, floor_s=0.0)
    for n in range(8):
        assert timeouts.base_s() == 100.0
        timeouts.answered(0.01 * (n + 1))
    for _ in range(8, 16):
        assert timeouts.base_s() == K * np.percentile(list(timeouts._recent), 99)
        timeouts.answered(1.0)


def test_an_earlier_deadline_wakes_the_timer_thread() -> None:
    expired = threading.Event()
    timeouts = Timeouts(30.0)
    flights = Flights(timeouts, 0, lambda f: None, lambda f: expired.set(), name="test-hot-flights")
    flights.start()
    try:
        flights.add(Flight(make_request(id="late"), Future(), t0=0.0))
        eventually(  # the timer thread sleeps towards the late flight's 30 s deadline
            lambda: flights._wake_at > time.monotonic() + 10, "the timer asleep for 30 s"
        )
        timeouts.ceiling_s = timeouts.floor_s = 0.05
        flights.add(Flight(make_request(id="soon"), Future(), t0=0.0))
        assert expired.wait(2.0)
    finally:
        flights.close(0)


def test_close_hears_the_last_flight_land() -> None:
    flights = Flights(Timeouts(30.0), 0, lambda f: None, lambda f: None, name="test-hot-close")
    flights.start()
    flights.add(Flight(make_request(id="r1"), Future(), t0=0.0))
    threading.Timer(0.05, flights.pop, ("r1",)).start()
    start = time.monotonic()
    assert flights.close(10.0) == []
    assert time.monotonic() - start < 5.0


def test_a_byte_order_mark_is_refused_as_json_loads_refuses_it() -> None:
    with pytest.raises(WireError, match=r"Unexpected UTF-8 BOM \(decode using utf-8-sig\)"):
        unpack_result("\ufeff{}".encode())
