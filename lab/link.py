"""Emulated network links, so bandwidth regimes reproduce on one machine.

``DelayLine`` is a serial link of a given bandwidth and one-way latency: a
message of n bytes leaves when the link is free, occupies it n/bandwidth
seconds, and arrives one-way latency later; the action attached to it runs
then, on the line's own thread. The device sends its requests through one
line (uplink) and receives its results through another (downlink).

``LinkSchedule`` changes the link while a device runs:
``50mbit/10ms@0,1mbit/40ms@10s`` is 50 Mbit/s for the first 10 s, then
1 Mbit/s with a 40 ms RTT. A message takes the link as it is when it is
sent.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from splitmq.shared.errors import UserError
from splitmq.shared.units import Link, parse_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSchedule:
    """Links in force from given offsets (seconds since the device started), in order."""

    steps: tuple[tuple[float, Link], ...]

    @classmethod
    def parse(cls, text: str) -> LinkSchedule:
        """``10mbit/20ms`` (one link), or ``LINK@T,LINK@T,...`` with T like 0, 10s, 500ms."""
        steps = []
        for part in text.split(","):
            link, sep, at = part.strip().partition("@")
            offset = parse_ms(at, f"time in {part!r}") / 1000 if sep else 0.0
            steps.append((offset, Link.parse(link)))
        if steps[0][0] != 0 or any(b[0] <= a[0] for a, b in itertools.pairwise(steps)):
            raise UserError(
                f"bad link schedule {text!r}: the first link starts @0 and times increase, "
                "e.g. 50mbit/10ms@0,1mbit/40ms@10s"
            )
        return cls(tuple(steps))

    @classmethod
    def fixed(cls, link: Link) -> LinkSchedule:
        return cls(((0.0, link),))

    def at(self, elapsed_s: float) -> Link:
        """The link in force ``elapsed_s`` seconds after the start."""
        current = self.steps[0][1]
        for offset, link in self.steps:
            if offset <= elapsed_s:
                current = link
        return current

    def __str__(self) -> str:
        if len(self.steps) == 1:
            return str(self.steps[0][1])
        return ",".join(f"{link}@{offset:g}s" for offset, link in self.steps)


class DelayLine:
    """A serial link with bandwidth and one-way latency (see module docstring)."""

    def __init__(self, schedule: LinkSchedule, name: str = "link") -> None:
        self.schedule = schedule
        self._t0 = time.monotonic()
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
            link = self.schedule.at(now - self._t0)
            leave = max(now, self._free_at) + nbytes * 8 / link.bps
            self._free_at = leave
            arrive = leave + link.rtt_ms / 2000
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
