"""A device's requests in flight: matched by id, resent on timeouts, then failed.

Every request ends in exactly one way: its answer or error arrives
(``pop``), it times out after its last attempt (``expire``), or the device
closes (``close`` hands back what is left). A timed-out request is sent
again with the same id (workers replay what they answered) by ``resend``;
both callbacks run on the flights' own thread.

Timeouts follow the latency the device sees instead of a fixed guess: an
attempt waits ``K`` times the p99 of the recent answers (at least ``floor_s``,
at most ``timeout_s``), and each further attempt twice as long again, with
up to 25% of random jitter, so retries after an overload do not all come
back at once. The window of requests in flight (``Window``) grows by one per
window's worth of answers and halves when answers slow down with queueing, on
a timeout or on an overload error (AIMD), so a device backs off from a tier
that cannot keep up instead of storming it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np

from splitmq.shared.protocol.wire import Request, Timing

#: Attempt timeout: K x the p99 of recent answers, within [floor_s, timeout_s].
K = 3.0
FLOOR_S = 1.0
JITTER = 0.25


@dataclass
class Flight:
    request: Request
    future: Future
    t0: float  # unix time the frame was taken
    attempts: int = 1
    deadline: float = 0.0  # monotonic
    sizes: list[int] = field(default_factory=list)  # payload bytes of each attempt
    delivered: bool = False  # the broker acknowledged an attempt: its uplink is done


class Timeouts:
    """How long an attempt may take, from the latency of recent answers."""

    #: The p99 is computed again once answers worth 1/STALE of the window came in:
    #: a percentile per request cost more than the rest of the device's bookkeeping.
    STALE = 16

    def __init__(self, timeout_s: float, floor_s: float = FLOOR_S, window: int = 256) -> None:
        self.ceiling_s, self.floor_s = timeout_s, min(floor_s, timeout_s)
        self._recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._base: float | None = None  # the cached base_s
        self._new = 0  # answers since it was computed

    def answered(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)
            self._new += 1

    def base_s(self) -> float:
        """The first attempt's timeout: the ceiling until a few answers are in."""
        with self._lock:
            if len(self._recent) < 8:
                return self.ceiling_s
            if self._base is None or self._new * self.STALE >= len(self._recent):
                p99 = float(np.percentile(list(self._recent), 99))
                self._base, self._new = min(self.ceiling_s, max(self.floor_s, K * p99)), 0
            return self._base

    def for_attempt(self, attempt: int) -> float:
        """Attempt n waits 2^(n-1) x the base, jittered up to 25% longer."""
        return self.base_s() * 2 ** (attempt - 1) * (1 + random.uniform(0, JITTER))


class Window:
    """How many requests may be in flight at once, between 1 and ``limit``.

    It starts at ``START`` and grows by one per window's worth of answers while their
    latency stays under ``QUEUED`` x the least latency of the recent ones (the latency
    of an empty queue) or that least latency plus ``SLACK_S``, whichever is longer; a
    slower answer (requests queueing somewhere), a timeout or an overload error halves
    it, at most once per such latency, so one burst of slow answers counts once. A
    device thus keeps only its share of a busy tier in flight.
    """

    START = 4
    QUEUED = 4.0
    #: Queueing this short is the device's own pipeline, not an overloaded tier: a tiny
    #: hop answers in about 1.5 ms, and 4x that alone kept a pipelining device at about
    #: 3 requests in flight, half the throughput of 32 (benchmarks.md, the tiny hop).
    SLACK_S = 0.025

    def __init__(self, limit: int, recent: int = 512) -> None:
        self.limit = limit
        self.size = float(min(limit, self.START))
        self._busy = 0
        self._cond = threading.Condition()
        self._latency: deque[float] = deque(maxlen=recent)
        self._last_cut = -float("inf")

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a place in the window, waiting at most ``timeout`` s (None: as long as it
        takes); whether it got one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._busy < int(self.size), timeout):
                return False
            self._busy += 1
            return True

    def release(self, latency_s: float | None = None, congested: bool = False) -> None:
        """One request ended: answered after ``latency_s``, failed by a timeout or an
        overload (``congested``), or failed saying nothing about load (neither)."""
        with self._cond:
            self._busy -= 1
            if latency_s is not None:
                self._latency.append(latency_s)
                least = min(self._latency)
                congested = latency_s > max(self.QUEUED * least, least + self.SLACK_S)
                if not congested:
                    self.size = min(float(self.limit), self.size + 1 / self.size)
            now = time.monotonic()
            if congested and now - self._last_cut > (latency_s or 0.0):
                self.size, self._last_cut = max(1.0, self.size / 2), now
            self._cond.notify_all()


class Flights:
    """The requests in flight of one device (see module docstring)."""

    def __init__(
        self,
        timeouts: Timeouts,
        retries: int,
        resend: Callable[[Flight], None],
        expire: Callable[[Flight], None],
        name: str,
        online: Callable[[], bool] = lambda: True,
    ) -> None:
        self.timeouts, self.retries = timeouts, retries
        self._online = online
        self._resend, self._expire = resend, expire
        self._flights: dict[str, Flight] = {}
        self._cond = threading.Condition()
        self._closed = False
        # waking a thread per request costs GIL hand-offs: the timer thread is woken only
        # for a deadline before the one it sleeps towards, close() only once all landed
        self._wake_at = -float("inf")
        self._draining = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, flight: Flight) -> None:
        flight.deadline = time.monotonic() + self.timeouts.for_attempt(1)
        with self._cond:
            self._flights[flight.request.id] = flight
            if flight.deadline < self._wake_at:
                self._cond.notify_all()

    def pop(self, request_id: str) -> Flight | None:
        """The flight an answer or error is for; None if already answered, failed or unknown."""
        with self._cond:
            flight = self._flights.pop(request_id, None)
            if self._draining and not self._flights:
                self._cond.notify_all()
        return flight

    def can_retry(self, request_id: str) -> bool:
        """Whether the request is in flight with attempts left to make."""
        with self._cond:
            flight = self._flights.get(request_id)
            return flight is not None and flight.attempts <= self.retries

    def oldest(self) -> tuple[int, float] | None:
        """Bytes and seconds out of the flight out longest on its first attempt and not yet
        acknowledged by the broker (what says most about the link: once acknowledged, its
        bytes crossed the uplink, and a late answer is a tier's or a WAN's, not the link's)."""
        with self._cond:
            first = [f for f in self._flights.values() if f.attempts == 1 and not f.delivered]
        flight = min(first, key=lambda f: f.request.timing.device.t_sent, default=None)
        if flight is None or not flight.sizes:
            return None
        return flight.sizes[-1], time.time() - flight.request.timing.device.t_sent

    def __len__(self) -> int:
        with self._cond:
            return len(self._flights)

    def close(self, wait_s: float) -> list[Flight]:
        """Wait up to ``wait_s`` for the flights to land, stop, and return those left."""
        with self._cond:
            self._draining = True
            self._cond.wait_for(lambda: not self._flights, max(0.0, wait_s))
            self._closed = True
            left = list(self._flights.values())
            self._flights.clear()
            self._cond.notify_all()
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [f for f in self._flights.values() if f.deadline <= now]
                if not due:
                    nxt = min((f.deadline for f in self._flights.values()), default=now + 1)
                    self._wake_at = now + max(0.01, nxt - now)
                    self._cond.wait(self._wake_at - now)
                    continue
                if not self._online():
                    # disconnected: nothing could answer; attempts spent now would only
                    # queue up behind the reconnect, so the clock restarts instead
                    for f in due:
                        f.deadline = now + self.timeouts.for_attempt(f.attempts)
                    continue
                again = [f for f in due if f.attempts <= self.retries]
                over = [f for f in due if f.attempts > self.retries]
                for f in over:
                    del self._flights[f.request.id]
                if over and self._draining and not self._flights:
                    self._cond.notify_all()  # close() waits for the last one
                for f in again:
                    f.attempts += 1
                    wait = self.timeouts.for_attempt(f.attempts)
                    f.deadline = now + wait
                    t = time.time()
                    f.request = replace(
                        f.request,
                        deadline=t + wait,
                        timing=Timing(replace(f.request.timing.device, t_sent=t)),
                    )
            for f in again:
                self._resend(f)
            for f in over:
                self._expire(f)
