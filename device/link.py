"""An emulated network link, so bandwidth regimes reproduce on one machine.

``DelayLine`` is a serial link of a given bandwidth and one-way latency: a
message of n bytes leaves when the link is free, occupies it n/bandwidth
seconds, and arrives one-way latency later; the action attached to it runs
then, on the line's own thread. The device sends its requests through one
line (uplink) and receives its results through another (downlink).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from splitmq.shared.errors import UserError

log = logging.getLogger(__name__)

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_LINK = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit/(\d+(?:\.\d+)?)ms$", re.IGNORECASE)


@dataclass(frozen=True)
class LinkSpec:
    """``10mbit/20ms``: bandwidth in bit/s and round-trip time in ms."""

    bits_per_s: float
    rtt_ms: float

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        m = _LINK.match(text.strip())
        if not m:
            raise UserError(
                f"bad link {text!r}: use BANDWIDTH/RTT like 10mbit/20ms or 500kbit/80ms"
            )
        bits = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if bits <= 0:
            raise UserError(f"bad link {text!r}: bandwidth must be positive")
        return cls(bits, float(m.group(3)))

    def __str__(self) -> str:
        return f"{self.bits_per_s / 1e6:g}mbit/{self.rtt_ms:g}ms"


class DelayLine:
    """A serial link with bandwidth and one-way latency (see module docstring)."""

    def __init__(self, bits_per_s: float, one_way_s: float, name: str = "link") -> None:
        self.bytes_per_s = bits_per_s / 8
        self.one_way_s = one_way_s
        self._free_at = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, nbytes: int, action: Callable[[], None]) -> float:
        """Schedule ``action`` for when ``nbytes`` would arrive; returns that delay in s."""
        with self._cond:
            now = time.monotonic()
            leave = max(now, self._free_at) + nbytes / self.bytes_per_s
            self._free_at = leave
            arrive = leave + self.one_way_s
            heapq.heappush(self._heap, (arrive, next(self._seq), action))
            self._cond.notify()
        return arrive - now

    def close(self) -> None:
        """Deliver nothing more; pending actions are dropped."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("link action failed")
