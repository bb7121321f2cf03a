"""A simulated battery, so the planner has an energy state to read from a test device."""

from __future__ import annotations

import threading

#: A small 1.5 Ah, 3.7 V cell.
BATTERY_JOULES = 20_000.0
#: Power while computing and while the radio sends (W); the planner's energy model
#: (docs) uses the same defaults.
COMPUTE_W = 2.0
RADIO_W = 1.0


class Battery:
    """Charge in [0, 1]; ``spend`` takes compute seconds (at this host's speed) and radio time."""

    def __init__(self, level: float = 1.0, speed: float = 1.0) -> None:
        self.level = level
        self.speed = speed
        self._lock = threading.Lock()

    def spend(self, compute_s: float, radio_s: float) -> None:
        joules = COMPUTE_W * compute_s / self.speed + RADIO_W * radio_s
        with self._lock:
            self.level = max(0.0, self.level - joules / BATTERY_JOULES)
