"""A device's conditions emulated on this host: a link, a slower processor, a battery.

``Emulated`` is what the lab plugs into a device runtime (``device.conditions``):
requests and results cross delay lines that follow a ``LinkSchedule``, the
device's own work takes 1/speed as long (``lab.speed.emulate``), and a
``Battery`` drains by the planner's energy model. Without a link, messages
go out at once (the link is this host's loopback).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from splitmq.lab.battery import Battery
from splitmq.lab.link import DelayLine, LinkSchedule
from splitmq.lab.speed import emulate
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.telemetry import Power
from splitmq.shared.units import Link

#: The radio's rate for the battery's sums when no link is emulated.
LOOPBACK_BPS = 100e6


class Emulated:
    """A device ``speed`` times as fast as this host, behind ``link``, on ``battery``."""

    def __init__(
        self,
        link: Link | LinkSchedule | None = None,
        speed: float = 1.0,
        battery: float | None = 1.0,
        battery_joules: float | None = None,
    ) -> None:
        if not 0 < speed <= 1:
            raise UserError(f"speed must be in (0, 1] (1 = this host), got {speed}")
        self.link = LinkSchedule.fixed(link) if isinstance(link, Link) else link
        self.speed = speed
        self._battery = None if battery is None else Battery(battery, battery_joules)
        self._lines: tuple[DelayLine, DelayLine] | None = None
        self._started = time.monotonic()
        self.started_at = time.time()  # when the link schedule began (set again on start)

    def start(self, name: str) -> None:
        self._started, self.started_at = time.monotonic(), time.time()
        if self.link:
            self._lines = (
                DelayLine(self.link, f"{name}-uplink"),
                DelayLine(self.link, f"{name}-downlink"),
            )

    def close(self) -> None:
        for line in self._lines or ():
            line.close()

    def uplink(self, nbytes: int, action: Callable[[], None]) -> None:
        if self._lines:
            self._lines[0].send(nbytes, action)
        else:
            action()

    def downlink(self, nbytes: int, action: Callable[[], None]) -> None:
        if self._lines:
            self._lines[1].send(nbytes, action)
        else:
            action()

    def computed(self, t_start: float, cpu_start: float, *stamps: float) -> tuple[float, ...]:
        return emulate(self.speed, t_start, cpu_start, *stamps)

    def spent(self, power: Power, compute_s: float, nbytes: int = 0, idle_s: float = 0.0) -> None:
        if self._battery is not None:
            link = self.link.at(time.monotonic() - self._started) if self.link else None
            radio_s = nbytes * 8 / (link.bps if link else LOOPBACK_BPS)
            self._battery.spend(power, compute_s, radio_s, idle_s)

    def battery(self) -> float | None:
        return None if self._battery is None else round(self._battery.level, 4)
