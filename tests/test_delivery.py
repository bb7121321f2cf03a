"""The device's admission window and retry clock, on their own (no broker needed)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from kit import make_request

from splitmq.device.flights import Flight, Flights, Timeouts, Window


def test_the_window_starts_small_and_grows_while_answers_stay_fast() -> None:
    w = Window(64)
    assert w.size == Window.START
    for _ in range(200):
        w.acquire()
        w.release(0.010)
    assert Window.START + 10 < w.size <= 64


def test_answers_slowed_by_queueing_halve_the_window_once_per_latency() -> None:
    w = Window(64)
    for _ in range(400):
        w.acquire()
        w.release(0.010)
    grown = w.size
    for _ in range(5):  # a burst of slow answers, all within one latency: one cut
        w.acquire()
        w.release(10.0)
    assert w.size == grown / 2


def test_a_timeout_halves_the_window_and_a_plain_failure_does_not() -> None:
    w = Window(8)
    w.acquire()
    w.release()  # e.g. a bad frame: says nothing about load
    assert w.size == Window.START
    w.acquire()
    w.release(congested=True)
    assert w.size == Window.START / 2


def test_no_attempt_is_spent_while_the_device_is_disconnected() -> None:
    online = threading.Event()
    resent: list[int] = []
    expired: list[Flight] = []
    gone = threading.Event()
    flights = Flights(
        Timeouts(0.05, floor_s=0.05),
        retries=1,
        resend=lambda f: resent.append(f.attempts),
        expire=lambda f: (expired.append(f), gone.set()),
        name="test-flights",
        online=online.is_set,
    )
    flights.start()
    try:
        flights.add(Flight(make_request(id="r1"), Future(), t0=0.0))
        assert not gone.wait(0.5)  # ten timeouts' worth offline: nothing spent
        assert resent == [] and flights.can_retry("r1")
        online.set()
        assert gone.wait(5)  # online: one retry, then a visible failure
        assert resent == [2] and [f.attempts for f in expired] == [2]
    finally:
        flights.close(0)
