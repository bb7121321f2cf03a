"""Watching the link: trains while requests do not measure it, overdue requests otherwise.

A device-only plan sends nothing, so its link estimate would go stale and the
planner could never move it back when the link recovers; small requests (an
MNIST request is 553 B) time per-message cost, not the link. So the prober
sends a **train** (``shared.transport.trains``) to ``probe/<device>``: a small
message first (its time to the PUBACK is the RTT), then messages back to back
that drain any burst the link allows and time its sustained rate. Nobody
subscribes there: the PUBACKs are the answer. When:

- **device-only:** at once, then every ``RECOVERY_S`` at most, so a link that
  recovers is seen within seconds; more rarely where 2% of the link allows
  (``SHARE``: from about 35 Mbit/s up). Draining a 32 kB bucket is the least
  an informative train costs, so on slower links the trains take more: 2-3%
  of 10-30 Mbit/s, 5% of 5, 18% of 1 Mbit/s, while the device sends nothing
  else. The issue's two targets conflict there; recovering within 5 s won
  (docs/planner.md, probing).
- **sending:** once at the start, to learn the link's burst (which request
  samples discount), and whenever no request measured the rate for
  ``STALE_S``; at most every ``STALE_S``, within ``SHARE`` of the link, and
  while no request is on its way (or ``IDLE_WAIT_S`` after it was due: a
  device that always has one must not let its estimate go stale).
- **right after a reading that was too short to time, or a jump the estimator
  keeps aside:** again at once, so a change counts after two agreeing
  trains, not one outlier.

While the broker is away, and for ``SETTLE_S`` after a reconnect (what queued
meanwhile crosses first), nothing is measured, and a train that spans a reconnect
is dropped.

While the plan sends requests, every ``TICK_S`` the oldest one the broker has not
acknowledged tells the estimator how long it has been out (``LinkEstimator.overdue``);
one acknowledged crossed the link, whatever keeps its answer (a tier, a WAN). Over
an emulated link every message passes the same delay lines as requests
(``Conditions``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from splitmq.device.conditions import Conditions
from splitmq.shared.errors import SplitMQError
from splitmq.shared.transport.estimates import LinkEstimator
from splitmq.shared.transport.mqtt import MqttClient
from splitmq.shared.transport.trains import DEFAULT_BPS, Train, read

log = logging.getLogger(__name__)

TICK_S = 0.2
PERIOD_S = 1.0  # trains at most this often (unless one asks for another at once)
RECOVERY_S = 2.5  # device-only: a train at least this often
STALE_S = 10.0  # sending: a train once no request measured the rate this long
SHARE = 0.02  # of the estimated link, at most, for trains (device-only: see above)
SMALL = 64  # bytes of the message timing the RTT
IDLE_WAIT_S = 2.0  # a train due waits this long at most for no request to be on its way
SETTLE_S = 2.0  # after a reconnect, what queued meanwhile crosses first: no samples
ACK_WAIT_S = 10.0  # a train not acknowledged by then: the link is far slower than thought


class Prober:
    """Probes the link (see module docstring); ``local()``: the plan is device-only."""

    def __init__(
        self,
        client: MqttClient,
        topic: str,
        estimates: LinkEstimator,
        local: Callable[[], bool],
        oldest: Callable[[], tuple[int, float] | None],
        conditions: Conditions,
        on_sample: Callable[[], None],
        name: str,
        on_sent: Callable[[int], None] = lambda nbytes: None,
    ) -> None:
        self.client, self.topic, self.estimates = client, topic, estimates
        self.local, self.oldest, self.on_sample = local, oldest, on_sample
        self.conditions, self.on_sent = conditions, on_sent
        self.sent_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        due, train, again = time.monotonic(), None, False
        while not self._stop.wait(TICK_S):
            if not self.client.connected or self.client.reconnected_within(SETTLE_S):
                continue  # nothing crosses, or the backlog does: overdue requests, trains lie
            local = self.local()
            if not local:
                out = self.oldest()  # (bytes, seconds out) of the oldest unacknowledged request
                if out is not None:
                    self.estimates.overdue(*out)
                    self.on_sample()
                    if time.monotonic() < due + IDLE_WAIT_S:
                        continue  # a train waits for an idle uplink, for a while
                age = self.estimates.rate_age_s()
                learned = self.estimates.burst_bytes() is not None
                if not again and learned and age is not None and age < STALE_S:
                    due = max(due, time.monotonic() + STALE_S - age)
            if time.monotonic() < due:
                continue
            train = train or Train.sized(self.estimates.uplink_bps(), self.estimates.burst_bytes())
            try:
                train, again = self._measure(train)
            except SplitMQError as exc:  # the broker went away: the next one will tell
                log.debug("probe train failed: %s", exc)
                train, again = None, False
            except Exception:  # a bug must not end the link's measurement: log it, go on
                log.exception("%s: a probe train failed", self._thread.name)
                train, again = None, False
            self.on_sample()
            bps, burst = self.estimates.uplink_bps(), self.estimates.burst_bytes()
            due = time.monotonic() + (0.0 if again else period_s(bps, burst, local))

    def _measure(self, train: Train) -> tuple[Train | None, bool]:
        """Send ``train``; the train to send next (None: sized afresh) and whether at once."""
        began = time.monotonic()
        rtt_s = self._time_small()
        start, acks = self._send(train)
        heard = sum(1 for t in acks if t)
        lost = self.client.reconnected_within(time.monotonic() - began)
        if not heard or lost or self._stop.is_set():
            return None, False  # the broker went away meanwhile (or the link): nothing learnt
        if heard < train.count:  # far slower than thought: what was acknowledged bounds it
            bps = heard * train.message * 8 / (time.monotonic() - start)
            self.estimates.rate(bps)  # the rest still queues: the next train waits its period
            return Train.sized(bps, self.estimates.burst_bytes()), False
        reading = read(train, start, acks, rtt_s)
        if reading.bps is None:
            longer = train.longer(reading.floor_bps)
            if longer is None:  # faster than the longest train can time: its floor is all
                self.estimates.rate(reading.floor_bps)
            return longer, longer is not None
        if self.estimates.trained(reading.bps, reading.burst):  # kept aside: confirm it now,
            return Train.sized(reading.bps, reading.burst), True  # sized for what it read
        return None, False

    def _time_small(self) -> float:
        """Seconds from sending ``SMALL`` bytes to hearing the broker has them."""
        start = time.monotonic()
        _through(self.conditions.uplink, SMALL)
        self.client.publish(self.topic, bytes(SMALL), qos=1, wait=5.0)
        _through(self.conditions.downlink, 8)  # the acknowledgement's way back
        self._sent(SMALL)
        rtt_s = time.monotonic() - start
        self.estimates.probe(rtt_s, rtt_s, 0)  # an RTT sample
        return rtt_s

    def _sent(self, nbytes: int) -> None:
        self.sent_bytes += nbytes
        self.on_sent(nbytes)

    def _send(self, train: Train) -> tuple[float, list[float]]:
        """Publish ``train`` back to back; its start and each message's PUBACK time."""
        acks = [0.0] * train.count
        left = [train.count]
        done = threading.Event()
        payload = bytes(train.message)

        def stamp(i: int) -> None:
            acks[i] = time.monotonic()
            left[0] -= 1
            if not left[0]:
                done.set()

        def heard(i: int) -> Callable[[int, str], None]:
            return lambda code, why: self.conditions.downlink(8, lambda: stamp(i))

        def send(i: int) -> Callable[[], None]:
            return lambda: self.client.publish(self.topic, payload, qos=1, on_ack=heard(i))

        start = time.monotonic()
        for i in range(train.count):
            self.conditions.uplink(train.message, send(i))
        self._sent(train.nbytes)
        deadline = start + ACK_WAIT_S  # those not acknowledged by then stay 0.0
        while not done.wait(TICK_S) and not self._stop.is_set() and time.monotonic() < deadline:
            pass
        return start, list(acks)


def period_s(bps: float | None, burst: float | None, local: bool) -> float:
    """Seconds until the next train: within ``SHARE`` of a link of ``bps``, but device-only
    (``local``) at most ``RECOVERY_S``, and sending at least ``STALE_S``."""
    bps = bps or DEFAULT_BPS
    share = Train.sized(bps, burst).nbytes * 8 / (SHARE * bps)
    return max(PERIOD_S, min(RECOVERY_S, share)) if local else max(STALE_S, share)


def _through(line: Callable[[int, Callable[[], None]], None], nbytes: int) -> None:
    """Wait as long as ``nbytes`` take over the device's link (no time on a real one)."""
    arrived = threading.Event()
    line(nbytes, arrived.set)
    arrived.wait(60)
