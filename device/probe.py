"""Watching the link: probes while a device runs locally, overdue requests otherwise.

A device-only plan sends nothing, so its link estimate would go stale and
the planner could never move it back when the link recovers. While the plan
is device-only, every ``PERIOD_S`` (or longer, see below) the prober
publishes two messages to ``probe/<device>``, QoS 1, and times each to its
acknowledgement by the broker: a small one (its time is the RTT) and one of
about 20 ms of the estimated uplink (1 kB to 64 kB; 16 kB before any
estimate); the difference gives the bandwidth. A difference under
``MEASURABLE_S`` is timer noise, not a rate: the next large probe is then
four times larger instead. The first pair goes out at once. Nobody
subscribes there: the PUBACK is the answer. The probe rate stays at most
``MAX_SHARE`` (1%) of the estimated bandwidth: the period grows when the
large probe would otherwise use more. Over an emulated link
the probes pass the same delay lines as requests and results (``Conditions``).

While the plan sends requests, every ``TICK_S`` the oldest one the broker has not
acknowledged tells the estimator how long it has been out (``LinkEstimator.overdue``);
one acknowledged crossed the link, whatever keeps its answer (a tier, a WAN).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from splitmq.device.conditions import Conditions
from splitmq.shared.errors import SplitMQError
from splitmq.shared.transport.estimates import (
    FIRST,
    SMALL,
    LinkEstimator,
    probe_period_s,
    record_probe,
)
from splitmq.shared.transport.mqtt import MqttClient

log = logging.getLogger(__name__)

PERIOD_S = 2.0
TICK_S = 0.2


class Prober:
    """Probes the link while ``wanted()`` (see module docstring)."""

    def __init__(
        self,
        client: MqttClient,
        topic: str,
        estimates: LinkEstimator,
        wanted: Callable[[], bool],
        oldest: Callable[[], tuple[int, float] | None],
        conditions: Conditions,
        on_sample: Callable[[], None],
        name: str,
    ) -> None:
        self.client, self.topic, self.estimates = client, topic, estimates
        self.wanted, self.oldest, self.on_sample = wanted, oldest, on_sample
        self.conditions = conditions
        self.sent_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        next_probe, size = time.monotonic(), FIRST
        while not self._stop.wait(TICK_S):
            if not self.wanted():
                out = self.oldest()  # (bytes, seconds out) of the oldest unanswered request
                if out is not None:
                    self.estimates.overdue(*out)
                    self.on_sample()
                continue
            if time.monotonic() < next_probe:
                continue
            bps = self.estimates.uplink_bps()
            next_probe = time.monotonic() + probe_period_s(bps, PERIOD_S)
            try:
                small_s, large_s = self._time(SMALL), self._time(size)
            except SplitMQError as exc:
                log.debug("probe failed: %s", exc)
                continue
            size = record_probe(self.estimates, small_s, large_s, size)
            self.on_sample()

    def _time(self, nbytes: int) -> float:
        """Seconds from sending ``nbytes`` to hearing the broker has them."""
        start = time.monotonic()
        _through(self.conditions.uplink, nbytes)
        self.client.publish(self.topic, bytes(nbytes), qos=1, wait=5.0)
        _through(self.conditions.downlink, 8)  # the acknowledgement's way back
        self.sent_bytes += nbytes
        return time.monotonic() - start


def _through(line: Callable[[int, Callable[[], None]], None], nbytes: int) -> None:
    """Wait as long as ``nbytes`` take over the device's link (no time on a real one)."""
    arrived = threading.Event()
    line(nbytes, arrived.set)
    arrived.wait(60)
