"""What a device learns about its link (an edge, about its WAN): from requests and probes.

- **RTT.** Results carry the worker's send time, so result arrival minus
  that time is the downlink's one-way delay (results are small: it is
  mostly latency); twice it is an RTT sample. A probe's small message gives
  another (``probe``).
- **Uplink.** Each answered request's first hop records when its last byte
  arrived. Requests pipelined through one uplink queue behind each other,
  so a single request's transfer time undercounts the rate; over the last
  few requests, their bytes divided by the time the uplink was busy (the
  union of [sent, arrived - RTT/2] over them) does not. A probe's pair of
  messages gives another sample.

- **Overdue requests.** A request still unacknowledged by the broker long after the estimate
  says it should have been (``OVERDUE`` times, plus 100 ms) bounds the
  rate from above: its bytes have taken at least that long. So when the
  link drops, the estimate falls while the requests are still on their way,
  not only once their answers are in (``overdue``).

Estimates are medians of the last few samples, so a link that changes is
seen within a few requests, and carry the age of their newest sample (a
stale one means nothing: ``planner.state`` treats it as unknown). Request
samples assume the hosts' clocks are synchronised (NTP), as the latency
breakdown does; probes do not.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

#: Samples each estimate is the median of.
WINDOW = 6
#: Recent requests whose busy time gives one uplink sample.
TRAIN = 4
#: How many times its expected time a request may take before it says the link is slower.
OVERDUE = 3.0


class LinkEstimator:
    """Median RTT and uplink rate over the last ``window`` samples (see module docstring)."""

    def __init__(self, window: int = WINDOW) -> None:
        self._rtt_s: deque[float] = deque(maxlen=window)
        self._bps: deque[float] = deque(maxlen=window)
        self._sent: deque[tuple[float, float, int]] = deque(maxlen=TRAIN)
        self._lock = threading.Lock()
        self._newest: float | None = None  # monotonic time of the newest sample

    def downlink(self, one_way_s: float) -> None:
        """A result arrived ``one_way_s`` after the worker sent it."""
        self._add(self._rtt_s, 2 * max(one_way_s, 0.0))

    def transfer(self, t_sent: float, t_arrived: float, nbytes: int) -> None:
        """An answered request's first hop: sent at ``t_sent``, all arrived at ``t_arrived``."""
        half_rtt = (self.rtt_ms() or 0.0) / 2000
        with self._lock:
            self._sent.append((t_sent, t_arrived - half_rtt, nbytes))
            spans = sorted((start, end) for start, end, _ in self._sent if end > start)
            total = sum(n for start, end, n in self._sent if end > start)
        busy, reach = 0.0, float("-inf")
        for start, end in spans:  # the length of the union of the spans
            busy += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        if busy > 1e-4:
            self._add(self._bps, total * 8 / busy)

    def probe(self, small_s: float, large_s: float, extra_bytes: int) -> None:
        """Two probes timed to their acknowledgement: ``extra_bytes`` more took that longer."""
        self._add(self._rtt_s, small_s)
        if large_s > small_s:
            self._add(self._bps, extra_bytes * 8 / (large_s - small_s))

    def overdue(self, nbytes: int, age_s: float) -> None:
        """A request of ``nbytes`` sent ``age_s`` ago is not answered yet."""
        bps, rtt_ms = self.uplink_bps(), self.rtt_ms() or 0.0
        if bps is None:
            return
        rtt = rtt_ms / 1000
        expected = nbytes * 8 / bps + rtt
        if age_s > OVERDUE * expected + 0.1:
            self._add(self._bps, min(bps, nbytes * 8 / (age_s - rtt)))

    def _add(self, samples: deque[float], value: float) -> None:
        with self._lock:
            samples.append(value)
            self._newest = time.monotonic()

    def rtt_ms(self) -> float | None:
        with self._lock:
            return round(1000 * statistics.median(self._rtt_s), 3) if self._rtt_s else None

    def rate_samples(self) -> int:
        """How many rate samples the uplink estimate is the median of."""
        with self._lock:
            return len(self._bps)

    def uplink_bps(self) -> float | None:
        with self._lock:
            return round(statistics.median(self._bps)) if self._bps else None

    def age_s(self) -> float | None:
        """Seconds since the newest sample behind the estimates; None before the first."""
        with self._lock:
            return None if self._newest is None else round(time.monotonic() - self._newest, 3)


# -- probing: what a device's prober and an edge's WAN probe send -------------------------

SMALL = 64  # bytes of the small probe: its time is the RTT
LARGE_S = 0.02  # how long the large probe should occupy the link
LARGE_MIN, LARGE_MAX = 1024, 65536
FIRST = 16384  # bytes of the first large probe
MEASURABLE_S = 0.002  # a difference under this is timer noise, not a rate
DEFAULT_BPS = 1e6  # before any estimate
MAX_SHARE = 0.01  # of the estimated link, at most, for probes


def probe_size(bps: float | None) -> int:
    """Bytes of the large probe: about 20 ms of the link, 1 kB to 64 kB."""
    return int(min(LARGE_MAX, max(LARGE_MIN, (bps or DEFAULT_BPS) * LARGE_S / 8)))


def probe_period_s(bps: float | None, least_s: float) -> float:
    """Seconds between probe pairs (at least ``least_s``) so they use at most 1% of the link."""
    size = probe_size(bps) + SMALL
    return max(least_s, size * 8 / (MAX_SHARE * (bps or DEFAULT_BPS)))


def record_probe(estimates: LinkEstimator, small_s: float, large_s: float, size: int) -> int:
    """Record a timed pair (``size``: the large one's bytes); return the next large size:
    four times larger when the difference was too small to time (the RTT still counts)."""
    if large_s - small_s < MEASURABLE_S:
        estimates.probe(small_s, small_s, 0)
        return min(LARGE_MAX, size * 4)
    estimates.probe(small_s, large_s, size - SMALL)
    return probe_size(estimates.uplink_bps())
