"""How each request in flight ends: a result, a worker's error, a refusal or a timeout.

``Replies`` is the one place a device's requests end. It matches results
and errors to their flights by id (``flights``), ends each future with an
``Answer`` or an ``InferenceFailed``, and learns from every end: the link
RTT from a result's timing, the timeouts from first attempts, the
fallback from answered tiers, the energy spent waiting. An answer to a
request that already failed, or a second one, is counted and dropped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from splitmq.device.answers import Answer, InferenceFailed
from splitmq.device.conditions import Conditions
from splitmq.device.flights import Flight, Flights, Timeouts
from splitmq.device.follow import Plans
from splitmq.shared.errors import WireError
from splitmq.shared.protocol.results import Result, unpack_error, unpack_result
from splitmq.shared.protocol.telemetry import Power
from splitmq.shared.runtime.stats import Stats
from splitmq.shared.transport.estimates import LinkEstimator
from splitmq.shared.transport.mqtt import Message

log = logging.getLogger(__name__)


@dataclass
class Replies:
    """Ends the flights of device ``device_id`` (see module docstring)."""

    device_id: str
    flights: Flights
    timeouts: Timeouts
    plans: Plans
    stats: Stats[str]
    estimates: LinkEstimator
    conditions: Conditions
    power: Power
    max_payload_bytes: int

    def __post_init__(self) -> None:
        self._failed: deque[str] = deque(maxlen=4096)  # ids that failed, to spot late answers

    def on_result(self, msg: Message) -> None:
        """A result on ``result/<device>`` (paho's thread): it crosses the downlink first."""

        def deliver() -> None:
            try:
                result = unpack_result(msg.payload, self.max_payload_bytes)
            except WireError as exc:
                log.warning("unreadable result on %s: %s", msg.topic, exc)
                self.stats.count("bad_result")
                return
            self.estimates.downlink(time.time() - result.t_sent)
            self.finish(result.id, result=result)

        self.conditions.downlink(len(msg.payload), deliver)

    def on_error(self, msg: Message) -> None:
        """An error report on ``error/<device>``."""
        try:
            report = unpack_error(msg.payload, self.max_payload_bytes)
        except WireError as exc:
            log.warning("unreadable error on %s: %s", msg.topic, exc)
            return
        if report.id is None:
            log.warning("worker error without request id: %s: %s", report.code, report.message)
            self.stats.fail(report.code)
            return
        if report.code == "expired" and self.flights.can_retry(report.id):
            # an attempt that waited out its deadline in a queue (a broker outage): the
            # attempt's timeout sends it again; only the last attempt's expiry fails it
            self.stats.count("expired_attempts")
            return
        self.finish(report.id, error=InferenceFailed(report.id, report.code, report.message))

    def expire(self, flight: Flight) -> None:
        """Every attempt of ``flight`` timed out."""
        self.stats.fail("timeout")
        self._failed.append(flight.request.id)
        tier = flight.request.route[0].tier
        flight.future.set_exception(
            InferenceFailed(
                flight.request.id, "timeout", f"no answer after {flight.attempts} attempt(s)"
            )
        )
        self.plans.timed_out(tier)

    def finish(
        self, request_id: str, result: Result | None = None, error: InferenceFailed | None = None
    ) -> None:
        """End request ``request_id`` with ``result`` or ``error``."""
        flight = self.flights.pop(request_id)
        if flight is None:
            if request_id in self._failed and result is not None:
                self.stats.count("answered_after_failure")
                log.warning(
                    "%s: an answer to request %s came after it failed", self.device_id, request_id
                )
            else:
                self.stats.count("duplicate_answers")  # a replay after a retry, or a redelivery
            return
        if error is not None or result is None:
            self.stats.fail(error.code if error else "internal")
            self._failed.append(request_id)
            flight.future.set_exception(error or InferenceFailed(request_id, "internal", "?"))
            return
        e2e = (time.time() - flight.t0) * 1000
        self._learn(flight, result, e2e)
        self.stats.latency("e2e", e2e)
        self.stats.finished()
        self.stats.count(f"answered_{result.tier}")
        flight.future.set_result(
            Answer.of(result, sum(flight.sizes), round(e2e, 3), flight.attempts)
        )

    def _learn(self, flight: Flight, result: Result, e2e_ms: float) -> None:
        """What an answered request says about timeouts, the link, the tier and energy."""
        sent = flight.request.timing.device
        if flight.attempts == 1:
            self.timeouts.answered(e2e_ms / 1000)
        # the idle draw while the answer was on its way (docs/planner.md, energy)
        self.conditions.spent(
            self.power, 0.0, 0, max(0.0, e2e_ms / 1000 - (sent.t_sent - sent.t_start))
        )
        self.plans.fallback.answered(flight.request.route[0].tier)
