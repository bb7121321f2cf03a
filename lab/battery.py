"""A simulated battery, so the planner has an energy state to read from a test device."""

from __future__ import annotations

import threading

from splitmq.shared.protocol.telemetry import Power

#: A small 1.5 Ah, 3.7 V cell.
BATTERY_JOULES = 20_000.0


class Battery:
    """Charge in [0, 1], drained by the planner's own energy model (``Power``)."""

    def __init__(self, level: float = 1.0, joules: float | None = None) -> None:
        self.level = level
        self.joules = joules or BATTERY_JOULES
        self._lock = threading.Lock()

    def spend(self, power: Power, compute_s: float, radio_s: float, idle_s: float) -> None:
        """Seconds computing (as this device runs), sending, and waiting for an answer."""
        joules = power.energy_mj(compute_s, radio_s, idle_s) / 1000
        with self._lock:
            self.level = max(0.0, self.level - joules / self.joules)
