"""What devices learn of their link, and emulated links that change while they run."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kit import eventually

from splitmq.device.follow import Fallback, local_plan
from splitmq.device.probe import RECOVERY_S, SHARE, STALE_S, period_s
from splitmq.device.runtime import Device
from splitmq.lab.emulation import Emulated
from splitmq.lab.link import DelayLine, LinkSchedule
from splitmq.shared.errors import UserError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.plan import Option, Plan, Prediction
from splitmq.shared.transport.estimates import SAMPLE_BYTES, LinkEstimator
from splitmq.shared.transport.trains import LONGEST, MESSAGE, Train, read
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
        est.acknowledged(0.0, 0.01 + 0.1 * (i + 1), 100_000)
    assert est.uplink_bps() == pytest.approx(8e6, rel=0.05)
    assert est.rtt_ms() == pytest.approx(10.0)


def test_requests_after_idle_time_leave_the_links_burst_out() -> None:
    """A 32 kB bucket passes each request's first 32 kB at once after idle time: 150 kB
    on 50 Mbit/s arrive in (150 - 32) kB / 50 Mbit/s, which read alone is +27%."""
    rate, burst, size = 50e6, 32768.0, 150_000

    def run(est: LinkEstimator) -> float | None:
        est.downlink(0.0)
        for i in range(8):  # one request every 250 ms: the bucket refills in between
            t = 0.25 * i
            est.acknowledged(t, t + (size - burst) * 8 / rate, size)
        return est.uplink_bps()

    unaware = run(LinkEstimator())
    assert unaware == pytest.approx(rate * size / (size - burst), rel=0.01)
    learned = LinkEstimator()
    learned.trained(rate, burst)
    assert run(learned) == pytest.approx(rate, rel=0.01)


def test_small_requests_leave_the_rate_to_trains() -> None:
    """553 B requests arrive in their per-message cost (0.4 ms), not in the link's time:
    they give no rate sample, and an estimate from a train stands."""
    est = LinkEstimator()
    est.trained(50e6, 32768)
    for i in range(40):
        t = 0.05 * i
        est.acknowledged(t, t + 0.0004, 553)
    assert est.uplink_bps() == 50e6 and est.rate_samples() == 1
    assert SAMPLE_BYTES > 4 * 553


def test_one_late_acknowledgement_does_not_confirm_itself() -> None:
    """150 kB every 200 ms on 50 Mbit/s, one PUBACK 100 ms late: its sample is kept aside,
    and the next, which times other requests, does not confirm it."""
    est = LinkEstimator()
    est.trained(50e6, 0.0)
    est.downlink(0.0)
    size, seen = 150_000, []
    for i in range(12):
        t = 0.2 * i
        late = 0.1 if i == 6 else 0.0
        est.acknowledged(t, t + size * 8 / 50e6 + late, size)
        seen.append(est.uplink_bps())
    assert all(bps == pytest.approx(50e6, rel=0.05) for bps in seen), seen


def test_a_jump_counts_once_the_next_sample_confirms_it() -> None:
    est = LinkEstimator()
    for _ in range(3):
        assert not est.rate(1e6)
    assert est.rate(50e6)  # kept aside: the estimate stands
    assert est.uplink_bps() == 1e6
    assert not est.rate(1.1e6)  # the next did not confirm it: it is gone
    assert est.rate(50e6) and est.uplink_bps() == pytest.approx(1.03e6, rel=0.1)
    assert not est.rate(48e6)  # confirmed: the two replace the history at once
    assert est.uplink_bps() == pytest.approx(49e6) and est.rate_samples() == 2
    assert est.rate(1e6) and not est.rate(1.2e6)  # and down alike
    assert est.uplink_bps() == pytest.approx(1.1e6)
    assert not LinkEstimator(confirm=False).rate(5e6)


def test_overdue_requests_bring_the_estimate_down_within_two_ticks() -> None:
    est = LinkEstimator()
    assert est.uplink_bps() is None and est.age_s() is None
    est.probe(0.020, 0.030, 10_000)  # 10 kB more took 10 ms more: 8 Mbit/s, RTT 20 ms
    assert est.uplink_bps() == pytest.approx(8e6) and est.rtt_ms() == pytest.approx(20.0)
    est.overdue(10_000, 0.05)  # 10 ms expected: 50 ms out is not overdue yet
    assert est.uplink_bps() == pytest.approx(8e6)
    est.overdue(10_000, 2.0)  # out for 2 s: the link is far slower than thought
    est.overdue(10_000, 2.2)
    assert est.uplink_bps() < 1e5
    assert est.age_s() is not None and est.age_s() < 1


def _bucket_acks(
    train: Train, rate: float, burst: float, rtt: float, line: float = 1e9
) -> list[float]:
    """PUBACK times of ``train``'s messages, sent at 0 through a token bucket of ``rate``
    bit/s and ``burst`` bytes (full at the start) on a ``line`` bit/s wire, ``rtt`` away."""
    acks, tokens, t = [], burst, 0.0
    size = train.message
    for i in range(train.count):
        arrival = (i + 1) * size * 8 / line
        now = max(arrival, t)
        tokens = min(burst, tokens + (now - t) * rate / 8) if i else tokens
        if tokens < size:  # the message waits for the bucket to refill
            now += (size - tokens) * 8 / rate
            tokens = size
        tokens -= size
        t = now
        acks.append(t + rtt)
    return acks


@pytest.mark.parametrize("rate", [1e6, 10e6, 50e6, 200e6])
def test_a_train_reads_the_sustained_rate_past_a_bucket(rate: float) -> None:
    burst, rtt = 32768.0, 0.02
    train = Train.sized(rate, burst)
    assert train.ahead * train.message > burst and train.nbytes <= LONGEST
    reading = read(train, 0.0, _bucket_acks(train, rate, burst, rtt), rtt)
    assert reading.bps == pytest.approx(rate, rel=0.02)
    assert reading.burst == pytest.approx(burst, abs=train.message)


def test_a_train_inside_the_bucket_asks_for_a_longer_one() -> None:
    rtt, rate = 0.02, 50e6
    train = Train.sized(1e6, None)  # sized for the default: far too short at 50 Mbit/s
    reading = read(train, 0.0, _bucket_acks(train, rate, 32768, rtt), rtt)
    assert reading.bps is None
    longer = train.longer(reading.floor_bps)
    assert longer is not None and longer.after * longer.message >= 4 * train.after * MESSAGE
    assert read(longer, 0.0, _bucket_acks(longer, rate, 32768, rtt), rtt).bps == pytest.approx(
        rate, rel=0.02
    )


def test_a_bucket_larger_than_the_train_expected_is_seen_draining() -> None:
    """A 160 kB bucket at 10 Mbit/s: the timed part's first half is still inside it; its
    second half is the rate, and the next train puts the learned burst ahead."""
    rate, burst, rtt = 10e6, 160_000.0, 0.02
    train = Train(ahead=4, after=40)
    reading = read(train, 0.0, _bucket_acks(train, rate, burst, rtt), rtt)
    assert reading.bps == pytest.approx(rate, rel=0.05) and reading.burst > 100_000
    bigger = Train.sized(rate, reading.burst)
    assert bigger.ahead * bigger.message > burst


def test_trains_stay_within_their_bounds() -> None:
    """A train grows until it cannot (then its floor is all there is), and a bucket read
    from an RTT that ran long does not size a train beyond ``LONGEST``."""
    train: Train | None = Train.sized(1e6, None)
    sizes = []
    while train is not None:
        sizes.append(train.nbytes)
        train = train.longer(train.bps_sized_for())
    assert sizes == sorted(sizes) and len(sizes) < 8 and sizes[-1] <= LONGEST
    huge = Train.sized(50e6, 10 * LONGEST)
    assert huge.after >= 2 and huge.ahead >= 1 and huge.nbytes <= LONGEST
    acks = _bucket_acks(huge, 50e6, 32768, 0.02)
    assert read(huge, 0.0, acks, rtt_s=1.0).burst < huge.nbytes  # an RTT of 1 s: capped


def test_trains_stay_within_their_share_of_the_link() -> None:
    for bps in (1e5, 1e6, 10e6, 35e6, 50e6, 1e9):
        train = Train.sized(bps, 32768)
        sending = period_s(bps, 32768, local=False)
        local = period_s(bps, 32768, local=True)
        assert train.nbytes * 8 / sending <= SHARE * bps * 1.0001 and sending >= STALE_S
        assert local <= RECOVERY_S  # device-only: a recovered link is seen within seconds
        if bps >= 35e6:  # ... within the share where it can be
            assert train.nbytes * 8 / local <= SHARE * bps * 1.0001


def _on_edge(**fields: Any) -> Plan:
    """A plan of model ``m`` sending its input to the edge, with ``fields``."""
    return Plan(model="m", version=1, cut=0, codec="u8", route=({"tier": "edge"},), **fields)


def test_consecutive_timeouts_fall_back_to_an_alternative_avoiding_the_tier() -> None:
    local = Option(cut=56, codec="raw", route=())
    cloud = Option(cut=0, codec="u8", route=({"tier": "cloud"},))
    plan = _on_edge(alternatives=(cloud, local))
    fallback = Fallback(after=3)
    assert fallback.timed_out(plan, "edge") is None
    fallback.answered("edge")  # an answer in between: the count starts again
    assert fallback.timed_out(plan, "edge") is None
    assert fallback.timed_out(plan, "edge") is None
    option, why = fallback.timed_out(plan, "edge")
    assert option == cloud and "3 requests to the edge timed out" in why
    moved = plan.fallback(option, why)
    assert moved.tiers == ("cloud",) and moved.alternatives == plan.alternatives


def test_a_link_too_slow_for_one_request_leaves_the_plan_at_once() -> None:
    """150 kB requests against 80 ms on the device: at 50 Mbit/s (24 ms) the plan stays;
    at 1 Mbit/s one request alone takes 1.2 s, and the device runs alone."""
    local = Option(
        cut=56,
        codec="raw",
        route=(),
        predicted=Prediction(latency_ms=80, bytes=0, energy_mj=1, agreement=1),
    )
    sent = Prediction(latency_ms=40, bytes=150_000, energy_mj=1, agreement=1)
    plan = _on_edge(predicted=sent, objective="latency", alternatives=(local,))
    assert Fallback.too_slow(plan, 50e6) is None
    option, why = Fallback.too_slow(plan, 1e6)
    assert option == local and "1 Mbit/s" in why and "1200 ms" in why and "80 ms" in why
    assert Fallback.too_slow(plan.model_copy(update={"objective": "bytes"}), 1e6) is None
    assert Fallback.too_slow(plan.fallback(local, why), 1e3) is None  # already alone


def test_a_device_only_device_learns_its_link_from_trains(settings, real_pool) -> None:
    """Nothing to send: the prober's trains, through the emulated 20 Mbit/s link (10 ms RTT)
    and a real broker, give the rate, the RTT and their costs on the device's metrics."""
    pool: ModelPool = real_pool
    cfg = settings.model_copy(update={"pool": pool.root})
    link = Emulated(Link.parse("20mbit/10ms"), 1.0)
    with Device(cfg, "trained", local_plan(pool.get("mnist-cnn")), conditions=link) as dev:

        def learned() -> bool:
            bps, rtt = dev.estimates.uplink_bps(), dev.estimates.rtt_ms()
            return bps is not None and abs(bps - 20e6) < 2e6 and rtt is not None and rtt >= 9.5

        eventually(learned, "an estimate within 10% of 20 Mbit/s and the 10 ms RTT", 15)
        assert dev.prober is not None and dev.prober.sent_bytes >= 32768
        assert dev.estimates.burst_bytes() is not None


def test_a_following_device_leaves_a_hopeless_plan_once(real_pool) -> None:
    """Samples keep coming from several threads while the switch is under way: one
    fallback, not one per sample."""
    from splitmq.device.follow import Plans
    from splitmq.shared.protocol.topics import Topics
    from splitmq.shared.runtime.sessions import SessionCache

    mv = real_pool.get("mnist-cnn")
    switches: list = []
    plans = Plans("d", local_plan(mv), SessionCache(real_pool), Topics(), switches.append)
    local = local_plan(mv).model_copy(
        update={"predicted": Prediction(latency_ms=5, bytes=0, energy_mj=1, agreement=1)}
    )
    sent = Prediction(latency_ms=3, bytes=785, energy_mj=1, agreement=1)
    offload = Plan(
        model=mv.name,
        version=mv.version,
        cut=0,
        codec="u8",
        route=({"tier": "edge"},),
        predicted=sent,
        objective="latency",
        alternatives=(Option(**{k: getattr(local, k) for k in Option.model_fields}),),
    )
    try:
        assert plans.switch(offload)
        threads = [threading.Thread(target=plans.link, args=(1e5,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        plans.close()  # waits for the switch under way
    assert plans.plan.device_only and plans.plan.fell_back
    assert [s.source for s in switches].count("fallback") == 1
