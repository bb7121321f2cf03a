"""The edge-to-cloud link (a site's WAN), measured by probes a cloud worker answers.

At a site (setting ``site``) each edge worker probes its way to the cloud tier:
a small ``ping/<edge>`` and then a large one, QoS 0, each answered at once by a
cloud worker with an empty ``pong/<edge>`` carrying the same correlation data
(``answer_pings``). The small one's round trip is the RTT; the large one's extra
time gives the rate (``shared.transport.estimates``: about 20 ms of the link, at most
1% of it; a pair that fits in a WAN's burst reads the burst, as devices' pairs did
before they sent trains). The estimate goes in the edge's
telemetry (``wan``), and the site's planner costs escalations with it
(``planner.wan``). Pings cross the bridge like escalations, so they measure the
same path; QoS 0, they are not queued while the WAN is down, and one unanswered
within ``TIMEOUT_S`` is just not a sample.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from splitmq.shared.errors import SplitMQError, WireError
from splitmq.shared.protocol.telemetry import LinkEstimate
from splitmq.shared.protocol.topics import ANY, Topics
from splitmq.shared.transport.estimates import (
    FIRST,
    LARGE_MAX,
    SMALL,
    LinkEstimator,
    probe_period_s,
    record_probe,
)
from splitmq.shared.transport.messages import Message
from splitmq.shared.transport.mqtt import MqttClient

log = logging.getLogger(__name__)

PERIOD_S = 2.0
TIMEOUT_S = 3.0
TOKEN_BYTES = 8
LOG_EVERY = 100


class WanProbe:
    """An edge's probes of its WAN (see module docstring). Start, stop, read ``estimate``."""

    def __init__(
        self, client: MqttClient, topics: Topics, edge_id: str, period_s: float = PERIOD_S
    ) -> None:
        self.client, self.topics, self.edge = client, topics, edge_id
        self.period_s = period_s
        self.estimates = LinkEstimator(window=6, confirm=False)  # WAN pairs, as before
        self._waiting: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{edge_id}-wan", daemon=True)

    def start(self) -> WanProbe:
        self.client.subscribe(self.topics.pong(self.edge), self._on_pong, qos=0)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:  # a probe waiting for its answer: none is coming now
            for answered in self._waiting.values():
                answered.set()
        self._thread.join(timeout=TIMEOUT_S + 1)

    def estimate(self) -> LinkEstimate | None:
        """The WAN as measured (None before the first answer)."""
        age = self.estimates.age_s()
        if age is None:
            return None
        return LinkEstimate(
            uplink_bps=self.estimates.uplink_bps(), rtt_ms=self.estimates.rtt_ms(), age_s=age
        )

    def _run(self) -> None:
        size, wait = FIRST, 0.0
        while not self._stop.wait(wait):
            wait = probe_period_s(self.estimates.uplink_bps(), self.period_s)
            try:
                small = self._time(SMALL)
                large = None if small is None or self._stop.is_set() else self._time(size)
            except SplitMQError as exc:  # disconnected: the next round tries again
                log.debug("WAN probe not sent: %s", exc)
                continue
            if small is not None and large is not None and not self._stop.is_set():
                size = record_probe(self.estimates, small, large, size)

    def _time(self, nbytes: int) -> float | None:
        """Seconds from sending ``nbytes`` to the cloud's answer; None without one."""
        token, answered = os.urandom(TOKEN_BYTES), threading.Event()
        with self._lock:
            self._waiting[token] = answered
        start = time.monotonic()
        try:
            ping = self.topics.ping(self.edge)
            self.client.publish(ping, bytes(nbytes), qos=0, correlation_data=token)
            return time.monotonic() - start if answered.wait(TIMEOUT_S) else None
        finally:
            with self._lock:
                self._waiting.pop(token, None)

    def _on_pong(self, msg: Message) -> None:
        with self._lock:
            answered = self._waiting.get(msg.correlation_data or b"")
        if answered is not None:
            answered.set()


def ping_filters(topics: Topics) -> list[str]:
    """Where a cloud worker hears edges' pings: its own tree and every site's."""
    return [topics.shared_pings(), topics.filters().at_site(ANY).shared_pings()]


def answer_pings(client: MqttClient, topics: Topics) -> None:
    """Answer every edge's pings at once (on the network thread: it only publishes).
    A ping no edge would send is not answered, and logged once in ``LOG_EVERY``."""
    ignored = 0

    def pong(msg: Message) -> None:
        nonlocal ignored
        token = msg.correlation_data
        try:
            if not token or len(token) > TOKEN_BYTES or len(msg.payload) > LARGE_MAX:
                raise WireError(f"{msg.topic}: not a ping an edge sends")
            tree = topics.scoped(msg.topic)
            edge = tree.parse_ping(msg.topic)
        except WireError as exc:
            if ignored % LOG_EVERY == 0:
                log.warning("ignoring a ping (%d so far): %s", ignored + 1, exc)
            ignored += 1
            return
        client.publish(tree.pong(edge), b"", qos=0, correlation_data=token)

    for filt in ping_filters(topics):
        client.subscribe(filt, pong, qos=0)
