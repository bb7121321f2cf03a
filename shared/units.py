"""Quantities people type: bandwidths (``5mbit``), durations (``40ms``), sizes (``10kB``),
and the link they make together (``50mbit/10ms``).

One parser each, so flags, link specs and settings accept the same spellings
and refuse anything else with a message that shows a valid one. Bandwidths
are bits per second (k, m, g are powers of 1000, as network rates are);
durations are milliseconds; sizes are bytes (k, M, G: powers of 1000).
A rate or a duration needs its unit: ``--uplink 5`` could mean 5 bit/s or
5 Mbit/s, ``--dwell 10`` 10 ms or 10 s, so a bare number is refused (but 0 s,
which is 0 in every unit). A bare size is bytes, what the flags name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from splitmq.shared.errors import UserError

_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_RATE = re.compile(rf"^{_NUMBER}\s*([kmg]?)(bit|bps|b/s)$", re.IGNORECASE)
_DURATION = re.compile(rf"^{_NUMBER}\s*(us|ms|s|min|m|h|d)$", re.IGNORECASE)
_BARE = re.compile(rf"^{_NUMBER}$")
_SIZE = re.compile(rf"^{_NUMBER}\s*([kmg]?)b?$", re.IGNORECASE)
_DURATION_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "min": 60e3, "m": 60e3, "h": 3600e3}
_DURATION_MS["d"] = 24 * _DURATION_MS["h"]  # a results store's retention: --keep 7d


def parse_rate(text: str, what: str = "bandwidth") -> float:
    """``5mbit``, ``500kbit``, ``1.5gbit``, ``200bit`` -> bit/s (> 0); a unit is required."""
    m = _RATE.match(text.strip())
    if not m:
        unit = "give a unit: " if _BARE.match(text.strip()) else ""
        raise UserError(f"bad {what} {text!r}: {unit}use a rate like 5mbit, 500kbit or 1gbit")
    bits = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if bits <= 0:
        raise UserError(f"bad {what} {text!r}: it must be positive")
    return bits


def parse_ms(text: str, what: str = "duration") -> float:
    """``40ms``, ``1.5s``, ``250us``, ``2min`` (or ``2m``), ``1h``, ``7d`` -> ms; a unit is required
    (but for 0)."""
    m = _DURATION.match(text.strip())
    if m:
        return float(m.group(1)) * _DURATION_MS[m.group(2).lower()]
    bare = _BARE.match(text.strip())
    if bare and float(bare.group(1)) == 0:
        return 0.0
    unit = "give a unit: " if bare else ""
    raise UserError(f"bad {what} {text!r}: {unit}use a duration like 40ms, 1.5s or 2min")


def parse_bytes(text: str, what: str = "size") -> int:
    """``10kB``, ``1.5MB``, ``800`` -> bytes (> 0)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UserError(f"bad {what} {text!r}: use a size like 800, 10kB or 1.5MB")
    size = round(float(m.group(1)) * _SCALE[m.group(2).lower()])
    if size <= 0:
        raise UserError(f"bad {what} {text!r}: it must be positive")
    return size


def format_rate(bits_per_s: float) -> str:
    """bit/s for people: ``5mbit``, ``500kbit`` (what ``parse_rate`` reads back)."""
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:g}{unit}"
    return f"{bits_per_s:g}bit"


@dataclass(frozen=True)
class Link:
    """A network path: bandwidth in bit/s and round-trip time in ms (``10mbit/20ms``).

    The one link type: what the planner costs a transfer with, what an emulated
    link delays messages by, and what ``--link``, ``--cloud-link`` and the like parse.
    """

    bps: float
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.bps > 0 or self.rtt_ms < 0:
            raise UserError(f"a link needs bandwidth > 0 and RTT >= 0, got {self}")

    @classmethod
    def parse(cls, text: str, what: str = "link") -> Link:
        """``BANDWIDTH/RTT``: ``10mbit/20ms``, ``500kbit/80ms``, ``1gbit/0.5ms``."""
        rate, sep, rtt = text.strip().partition("/")
        if not sep:
            raise UserError(
                f"bad {what} {text!r}: use BANDWIDTH/RTT like 10mbit/20ms or 500kbit/80ms"
            )
        return cls(
            parse_rate(rate, f"{what} bandwidth in {text!r}"),
            parse_ms(rtt, f"RTT in {text!r}"),
        )

    def __str__(self) -> str:
        return f"{format_rate(self.bps)}/{self.rtt_ms:g}ms"
