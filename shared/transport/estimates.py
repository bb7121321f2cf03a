"""What a device learns about its link (an edge, about its WAN): from requests and probes.

- **RTT.** Results carry the worker's send time, so result arrival minus
  that time is the downlink's one-way delay (results are small: it is
  mostly latency); twice it is an RTT sample. A probe's small message gives
  another (``probe``, ``trained``).
- **Uplink.** The broker's acknowledgement of each request (each attempt,
  answered or not), timed on the device's own clock, says when its last byte
  arrived: an RTT before the PUBACK. Requests pipelined through one uplink
  queue behind each other, so a single request's time undercounts the rate;
  over the last ``TRAIN`` requests, the newest among them, their bytes divided
  by the time the uplink was busy (the union of [sent, acknowledged - RTT]
  over them, those done ``RECENT_S`` before the newest was sent left out)
  does not. A link that buffers passes the first ``burst`` bytes after idle
  time faster than its rate (learned from trains, ``shared.transport.trains``):
  each busy period's first bytes, up to what the bucket refilled while idle,
  are left out. A sample needs ``SAMPLE_BYTES`` timed over ``SAMPLE_S`` at
  least: a few small requests' time is mostly per-message cost, not the link
  (MNIST requests of 553 B read a 50 Mbit/s link as 10), so they leave the
  rate to trains. Probes and trains give further samples.
- **Overdue requests.** A request still unacknowledged by the broker long
  after the estimate says it should have been (``OVERDUE`` times, plus
  100 ms, counted from the newest acknowledgement if later: until then it
  may have queued behind other requests) bounds the rate from above: its
  bytes have taken at least that long. So when the link drops, the estimate
  falls while the requests are still on their way (``overdue``).

The rate is the median of the last ``window`` samples, so a change is seen
within a couple of samples; a sample more than ``JUMP`` times away from it is
kept aside (``rate`` says so: a prober then measures again at once) until the
next one, timing other requests, confirms it, and then the two replace the
history. One odd sample neither moves the estimate nor makes the planner
switch a plan that the next sample would undo. Estimates carry the age of
their newest sample (a stale one means nothing: ``planner.state`` treats it as
unknown). Request samples take the RTT estimate off each PUBACK; while a
device offloads, that estimate comes mostly from results, which assume the
hosts' clocks are synchronised (NTP), as the latency breakdown does. Trains
time everything on the device's clock.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

from splitmq.shared.transport.trains import DEFAULT_BPS

#: Rate samples the estimate is the median of (a device's; an edge's WAN keeps more).
WINDOW = 3
#: RTT samples the estimate is the median of, at least.
RTT_WINDOW = 6
#: Recent requests whose busy time gives one uplink sample.
TRAIN = 4
#: How many times its expected time a request may take before it says the link is slower.
OVERDUE = 3.0
#: A rate sample this many times off the estimate waits for the next to confirm it.
JUMP = 2.0
#: Bytes a request sample must time, beyond the link's burst, and for at least how long
#: (a few small requests' time is mostly their per-message cost, not the link's).
SAMPLE_BYTES, SAMPLE_S = 16384, 0.01
#: Requests done this long before the newest was sent say nothing about the link now.
RECENT_S = 2.0


class LinkEstimator:
    """Median RTT and uplink rate over the last ``window`` samples (see module docstring);
    ``confirm``: a jump waits for a second sample."""

    def __init__(self, window: int = WINDOW, confirm: bool = True) -> None:
        self._rtt_s: deque[float] = deque(maxlen=max(window, RTT_WINDOW))
        self._bps: deque[float] = deque(maxlen=window)
        self._bursts: deque[float] = deque(maxlen=3)
        self._sent: deque[tuple[float, float, int]] = deque()  # (sent, done, bytes)
        self._busy_until = float("-inf")  # when spans no longer in ``_sent`` ended
        self._lock = threading.Lock()
        self._confirm = confirm
        self._aside: float | None = None  # a jump waiting for confirmation
        self._newest: float | None = None  # monotonic time of the newest sample
        self._newest_rate: float | None = None  # ... of the newest rate sample that counted
        self._acked_at: float | None = None  # monotonic time of the newest request's PUBACK

    def downlink(self, one_way_s: float) -> None:
        """A result arrived ``one_way_s`` after the worker sent it."""
        self._add(self._rtt_s, 2 * max(one_way_s, 0.0))

    def acknowledged(self, t_sent: float, t_acked: float, nbytes: int) -> None:
        """The broker acknowledged at ``t_acked`` a request of ``nbytes`` sent at ``t_sent``:
        a sample over the last ``TRAIN`` requests, this one among them (module docstring)."""
        rtt = (self.rtt_ms() or 0.0) / 1000
        with self._lock:
            self._acked_at = t_acked
            if t_acked - rtt <= t_sent:
                return  # done within the RTT's error: it times nothing
            self._sent.append((t_sent, t_acked - rtt, nbytes))
            while len(self._sent) > TRAIN or self._sent[0][1] < t_sent - RECENT_S:
                self._busy_until = max(self._busy_until, self._sent.popleft()[1])
            spans, reach = sorted(self._sent), self._busy_until
            bps = statistics.median(self._bps) if self._bps else None
            burst = statistics.median(self._bursts) if self._bursts else 0.0
        busy = timed = free = 0.0
        for start, end, n in spans:
            if start > reach:  # after idle time: the bucket refilled, up to ``burst``
                idle = start - reach
                free = burst if bps is None else min(burst, idle * bps / 8)
            taken = min(free, n)
            free -= taken
            timed += n - taken
            busy += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        if timed >= SAMPLE_BYTES and busy >= SAMPLE_S:
            self.rate(timed * 8 / busy)

    def probe(self, small_s: float, large_s: float, extra_bytes: int) -> None:
        """Two probes timed to their acknowledgement: ``extra_bytes`` more took that longer."""
        self._add(self._rtt_s, small_s)
        if large_s > small_s:
            self.rate(extra_bytes * 8 / (large_s - small_s))

    def trained(self, bps: float, burst: float) -> bool:
        """A train's reading (``shared.transport.trains``); True: kept aside (see ``rate``)."""
        aside = self.rate(bps)
        if not aside:
            self._add(self._bursts, burst)
        return aside

    def overdue(self, nbytes: int, age_s: float) -> None:
        """A request of ``nbytes`` sent ``age_s`` ago is not acknowledged yet: counted from
        the newest acknowledgement if later (until then it queued behind other requests)."""
        bps, rtt_ms = self.uplink_bps(), self.rtt_ms() or 0.0
        if bps is None:
            return
        with self._lock:
            if self._acked_at is not None:
                age_s = min(age_s, time.monotonic() - self._acked_at)
        rtt = rtt_ms / 1000
        expected = nbytes * 8 / bps + rtt
        if age_s > OVERDUE * expected + 0.1:
            self.rate(min(bps, nbytes * 8 / (age_s - rtt)))

    def rate(self, bps: float) -> bool:
        """A rate sample; True when it is kept aside: ``JUMP`` times away from the
        estimate, it counts once the next sample confirms it (see module docstring)."""
        with self._lock:
            self._newest = time.monotonic()
            median = statistics.median(self._bps) if self._bps else None
            if not self._confirm or median is None or 1 / JUMP <= bps / median <= JUMP:
                self._bps.append(bps)
                self._aside, self._newest_rate = None, self._newest
                return False
            aside, self._aside = self._aside, bps
            self._forget_requests()  # the next sample, to confirm, must time other requests
            if aside is None or (aside > median) != (bps > median):
                return True
            self._bps.clear()
            self._bps.extend((aside, bps))
            self._aside, self._newest_rate = None, self._newest
            return False

    def _forget_requests(self) -> None:
        """Leave the requests timed so far out of later samples (but not when they ended)."""
        for _, end, _ in self._sent:
            self._busy_until = max(self._busy_until, end)
        self._sent.clear()

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

    def burst_bytes(self) -> float | None:
        """Bytes the link passes ahead of its rate after idle time (None: no train yet)."""
        with self._lock:
            return statistics.median(self._bursts) if self._bursts else None

    def age_s(self) -> float | None:
        """Seconds since the newest sample behind the estimates; None before the first."""
        with self._lock:
            return None if self._newest is None else round(time.monotonic() - self._newest, 3)

    def rate_age_s(self) -> float | None:
        """Seconds since the newest rate sample; None before the first."""
        with self._lock:
            return None if self._newest_rate is None else time.monotonic() - self._newest_rate


# -- pairs of probes: what an edge's WAN probe sends (a device sends trains) ---------------

SMALL = 64  # bytes of the small probe: its time is the RTT
LARGE_S = 0.02  # how long the large probe should occupy the link
LARGE_MIN, LARGE_MAX = 1024, 65536
FIRST = 16384  # bytes of the first large probe
MEASURABLE_S = 0.002  # a difference under this is timer noise, not a rate
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
