"""What devices learn of their link, and emulated links that change while they run."""

from __future__ import annotations

import time

import pytest

from splitmq.device.follow import Fallback
from splitmq.device.probe import PERIOD_S
from splitmq.lab.link import DelayLine, LinkSchedule
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.plan import Option, Plan
from splitmq.shared.transport.estimates import (
    MAX_SHARE,
    SMALL,
    LinkEstimator,
    probe_period_s,
    probe_size,
)
from splitmq.shared.units import Link


def test_link_schedules() -> None:
    s = LinkSchedule.parse("50mbit/10ms@0,1mbit/40ms@10s")
    assert s.at(0) == Link(50e6, 10) and s.at(9.99) == Link(50e6, 10)
    assert s.at(10) == Link(1e6, 40) and s.at(1e6) == Link(1e6, 40)
    assert str(s) == "50mbit/10ms@0s,1mbit/40ms@10s"
    assert LinkSchedule.parse("5mbit/20ms").at(99) == Link(5e6, 20)
    for bad in ("1mbit/4ms@3s", "1mbit/4ms@0,2mbit/4ms@0", "fast@0"):
        with pytest.raises(UserError):
            LinkSchedule.parse(bad)


def test_a_delay_line_takes_the_link_in_force_when_a_message_is_sent() -> None:
    line = DelayLine(LinkSchedule.parse("80mbit/0ms@0,8mbit/0ms@0.05s"))
    try:
        fast = line.send(10_000, lambda: None)  # 1 ms at 80 Mbit/s
        time.sleep(0.06)  # past the change: pacing a test, not synchronising one
        slow = line.send(10_000, lambda: None)  # 10 ms at 8 Mbit/s
    finally:
        line.close()
    assert fast == pytest.approx(0.001, abs=5e-4) and slow == pytest.approx(0.010, abs=1e-3)


def test_pipelined_requests_do_not_hide_the_rate() -> None:
    est = LinkEstimator()
    est.downlink(0.005)  # RTT 10 ms
    # Four 100 kB requests sent together over 8 Mbit/s: each arrives 100 ms after the last.
    for i in range(4):
        est.transfer(0.0, 0.005 + 0.1 * (i + 1), 100_000)
    assert est.uplink_bps() == pytest.approx(8e6, rel=0.05)
    assert est.rtt_ms() == pytest.approx(10.0)


def test_probes_and_overdue_requests_give_samples() -> None:
    est = LinkEstimator()
    assert est.uplink_bps() is None and est.age_s() is None
    est.probe(0.020, 0.030, 10_000)  # 10 kB more took 10 ms more: 8 Mbit/s, RTT 20 ms
    assert est.uplink_bps() == pytest.approx(8e6) and est.rtt_ms() == pytest.approx(20.0)
    est.overdue(10_000, 0.05)  # 10 ms expected: 50 ms out is not overdue yet
    assert est.uplink_bps() == pytest.approx(8e6)
    for _ in range(5):  # out for 2 s: the link is far slower than thought
        est.overdue(10_000, 2.0)
    assert est.uplink_bps() < 1e5
    assert est.age_s() is not None and est.age_s() < 1


def test_probes_stay_under_one_percent_of_the_link() -> None:
    for bps in (1e5, 1e6, 5e7, 1e9, None):
        size, period = probe_size(bps), probe_period_s(bps, PERIOD_S)
        assert 1024 <= size <= 65536 and period >= PERIOD_S
        assert (size + SMALL) * 8 / period <= MAX_SHARE * (bps or 1e6) * 1.0001


def test_consecutive_timeouts_fall_back_to_an_alternative_avoiding_the_tier() -> None:
    local = Option(cut=56, codec="raw", route=())
    cloud = Option(cut=0, codec="u8", route=({"tier": "cloud"},))
    plan = Plan(
        model="m",
        version=1,
        cut=0,
        codec="u8",
        route=({"tier": "edge"},),
        alternatives=(cloud, local),
    )
    fallback = Fallback(after=3)
    assert fallback.timed_out(plan, "edge") is None
    fallback.answered("edge")  # an answer in between: the count starts again
    assert fallback.timed_out(plan, "edge") is None
    assert fallback.timed_out(plan, "edge") is None
    option, why = fallback.timed_out(plan, "edge")
    assert option == cloud and "3 requests to the edge timed out" in why
    moved = plan.fallback(option, why)
    assert moved.tiers == ("cloud",) and moved.alternatives == plan.alternatives
