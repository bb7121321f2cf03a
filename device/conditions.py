"""The seam between a device and what surrounds it: its network path, its compute, its power.

A device in the field sends over its real network at its own speed, on whatever
powers it: ``Direct`` says so and changes nothing. The lab plugs in emulated
links, a slower processor and a simulated battery through the same narrow
protocol (``splitmq.lab.emulation``), so the runtime holds no emulation of its
own and runs the same code either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from splitmq.shared.protocol.telemetry import Power


class Conditions(Protocol):
    """What a device runs under (see module docstring)."""

    #: Speed vs the profile's host, as the device reports it to the planner.
    speed: float

    def start(self, name: str) -> None:
        """The device starts now (an emulated link schedule begins)."""

    def close(self) -> None:
        """The device stops: nothing more is delivered."""

    def uplink(self, nbytes: int, action: Callable[[], None]) -> None:
        """Run ``action`` once ``nbytes`` sent now have crossed the uplink."""

    def downlink(self, nbytes: int, action: Callable[[], None]) -> None:
        """Run ``action`` once ``nbytes`` sent to the device now have reached it."""

    def computed(self, t_start: float, cpu_start: float, *stamps: float) -> tuple[float, ...]:
        """``stamps`` of work begun at ``t_start`` as this device's clock reads them."""

    def spent(self, power: Power, compute_s: float, nbytes: int = 0, idle_s: float = 0.0) -> None:
        """Energy drawn: seconds computing, bytes sent, seconds waiting for an answer."""

    def battery(self) -> float | None:
        """Charge in [0, 1]; None on mains power."""


class Direct:
    """A real device: messages go out at once, times are as measured, no battery model."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed

    def start(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass

    def uplink(self, nbytes: int, action: Callable[[], None]) -> None:
        action()

    def downlink(self, nbytes: int, action: Callable[[], None]) -> None:
        action()

    def computed(self, t_start: float, cpu_start: float, *stamps: float) -> tuple[float, ...]:
        return stamps

    def spent(self, power: Power, compute_s: float, nbytes: int = 0, idle_s: float = 0.0) -> None:
        pass

    def battery(self) -> float | None:
        return None
