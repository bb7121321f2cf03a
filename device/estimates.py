"""What the device learns about its network from its own requests.

Results carry the worker's send time, so result arrival minus that time is
the downlink's one-way delay (results are small: it is mostly latency);
twice its median estimates the RTT. Each request's first hop records when it
arrived, so its transfer time minus half the RTT is the time its bytes spent
on the uplink, which gives the bandwidth. Both assume the hosts' clocks are
synchronised (NTP), as the latency breakdown does.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque


class LinkEstimator:
    """Median one-way delay and uplink rate over the last ``window`` requests."""

    def __init__(self, window: int = 64) -> None:
        self._one_way: deque[float] = deque(maxlen=window)
        self._bps: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._newest: float | None = None  # monotonic time of the newest sample

    def downlink(self, one_way_s: float) -> None:
        with self._lock:
            self._one_way.append(max(one_way_s, 0.0))
            self._newest = time.monotonic()

    def uplink(self, nbytes: int, transfer_s: float) -> None:
        rtt = (self.rtt_ms() or 0.0) / 1000
        on_wire = transfer_s - rtt / 2
        if on_wire > 1e-4:
            with self._lock:
                self._bps.append(nbytes * 8 / on_wire)
                self._newest = time.monotonic()

    def rtt_ms(self) -> float | None:
        with self._lock:
            return round(2000 * statistics.median(self._one_way), 3) if self._one_way else None

    def uplink_bps(self) -> float | None:
        with self._lock:
            return round(statistics.median(self._bps)) if self._bps else None

    def age_s(self) -> float | None:
        """Seconds since the newest sample behind the estimates; None before the first."""
        with self._lock:
            return None if self._newest is None else round(time.monotonic() - self._newest, 3)
