"""Timing a link's sustained rate with a train of messages, past any burst it allows.

Links that buffer pass their first bytes faster than their rate: a shaper's token
bucket (``tc tbf ... burst 32kb``), Wi-Fi and cellular links alike. A probe that fits
in the bucket times the bucket: two probes of at most 64 kB read about twice a
1 Mbit/s link shaped with a 32 kB burst (docs/benchmarks.md, the link estimate on a
shaped link). So a train is ``ahead`` bytes, meant to drain such a bucket, then
``after`` bytes that are timed: messages of ``MESSAGE`` to ``LARGEST`` bytes (about
``TIMED`` in the timed part: a client keeps only about 20 unacknowledged, so small
messages would pace a fast link by its RTT) published back to back, QoS 1, each
acknowledgement timed on the sender's own clock (no clock sync). The rate is the bytes
acknowledged after the message that crossed ``ahead`` over the time from its
acknowledgement to the last one, so a fixed per-message cost (about 0.4 ms here)
overlaps the link's time instead of adding to it. What the train passed faster than
that rate is the link's burst, which request samples then discount
(``LinkEstimator.acknowledged``).

A timed part shorter than ``TIMED_S`` is timer noise or still inside a bucket: the
next train is longer (``Train.longer``), up to ``LONGEST``: a link faster than that
can time gives only the train's floor. A timed part whose first half ran
much faster than its second was still draining the bucket: its second half is the
rate, and the next train puts more ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

MESSAGE = 8192  # bytes per message of a train, at least
LARGEST = 65536  # ... and at most
TIMED = 8  # messages the timed part aims at (a client keeps only about 20 unacknowledged)
BUCKET = 32768  # the bucket a train must drain before one is learned
AFTER_S = 0.04  # how long the timed part should occupy the link
LONGEST = 1 << 20  # bytes of a train, at most
TIMED_S = 0.01  # a timed part shorter than this tells no rate
DRAINING = 1.5  # a first half this many times faster than the second: a bucket draining
DEFAULT_BPS = 1e6  # before any estimate


def _count(nbytes: float, message: int) -> int:
    return max(1, -(-int(nbytes) // message))


@dataclass(frozen=True)
class Train:
    """A train to send: ``ahead`` then ``after`` messages of ``message`` bytes."""

    ahead: int  # messages meant to drain a bucket
    after: int  # messages that are timed
    message: int = MESSAGE

    @classmethod
    def sized(cls, bps: float | None, burst: float | None) -> Train:
        """A train for a link of about ``bps`` with a bucket of about ``burst`` bytes: its
        timed part lasts ``AFTER_S`` in about ``TIMED`` messages (two at least), at most
        ``LONGEST`` in all."""
        timed = (bps or DEFAULT_BPS) * AFTER_S / 8
        message = int(min(LARGEST, max(MESSAGE, timed / TIMED)))
        most = LONGEST // message
        after = min(max(2, _count(timed, message)), most // 2)
        ahead = min(_count(max(BUCKET, burst or 0) + MESSAGE, message), most - after)
        return cls(ahead, after, message)

    def longer(self, floor_bps: float) -> Train | None:
        """The next train after one too short to time: sized for a link at least
        ``floor_bps`` (what the short one passed) and at least four times longer; None
        when it cannot grow (``LONGEST``): the link is faster than a train can time."""
        grown = Train.sized(max(floor_bps, self.bps_sized_for() * 4), self.burst_drained())
        return grown if grown.after * grown.message > self.after * self.message else None

    def bps_sized_for(self) -> float:
        """The rate whose ``AFTER_S`` the timed part holds."""
        return self.after * self.message * 8 / AFTER_S

    def burst_drained(self) -> float:
        """The largest bucket the part ahead drains (less its slack)."""
        return max(0, self.ahead * self.message - MESSAGE)

    @property
    def count(self) -> int:
        return self.ahead + self.after

    @property
    def nbytes(self) -> int:
        return self.count * self.message


@dataclass(frozen=True)
class Reading:
    """What a train's acknowledgements say."""

    bps: float | None  # the sustained rate; None: the timed part was too short to tell
    floor_bps: float  # the whole train's rate, which a bucket only raises: a lower bound
    burst: float  # bytes the link passed ahead of its rate (at least 0)


def read(train: Train, start: float, acks: list[float], rtt_s: float) -> Reading:
    """Read the acknowledgement times ``acks`` (one per message, monotonic seconds) of
    ``train`` sent from ``start``; ``rtt_s``: a small message's time to its PUBACK."""
    size = train.message
    last, first = acks[-1], acks[train.ahead - 1]
    whole = train.nbytes * 8 / max(last - start, 1e-6)
    if last - first < TIMED_S:
        return Reading(None, whole, 0.0)
    bps = train.after * size * 8 / (last - first)
    middle = train.ahead - 1 + train.after // 2
    if train.after >= 4 and acks[middle] > first and last > acks[middle]:
        early = (middle - train.ahead + 1) * size * 8 / (acks[middle] - first)
        late = (train.count - 1 - middle) * size * 8 / (last - acks[middle])
        if early > DRAINING * late and last - acks[middle] >= TIMED_S / 2:
            bps = late  # the bucket was still draining in the timed part's first half
    burst = train.nbytes - bps / 8 * max(0.0, last - start - rtt_s)
    # at most what was sent up to the timed part's middle: an RTT that ran long must not
    # read the whole train as a bucket
    return Reading(bps, whole, min(max(0.0, burst), (middle + 1) * size))
