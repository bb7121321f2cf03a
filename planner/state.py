"""What the planner decides from: a device's state and the state of each tier.

Plain values, so a what-if question (``splitmq plan``) and the live planner
build them alike; ``fleet`` reads them off the typed telemetry documents
the roles publish (``shared.protocol.telemetry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from splitmq.shared.errors import UserError
from splitmq.shared.protocol.ids import Tier
from splitmq.shared.protocol.telemetry import Power
from splitmq.shared.units import Link


@dataclass(frozen=True)
class DeviceState:
    """One device: its speed (vs the profile's host), link, battery and power draw.

    ``link`` None means no estimate yet: only device-only plans are possible.
    The downlink is assumed as fast as the uplink unless given. ``rate_rps``
    is the load the device itself would add to a tier (0: negligible).
    ``preprocess_ms`` is what turning a frame into the model input costs, at
    the profile's host speed like the profile (every plan pays it).
    """

    speed: float = 1.0
    link: Link | None = None
    preprocess_ms: float = 0.0
    downlink_bps: float | None = None
    battery: float | None = None
    power: Power = field(default_factory=Power)
    rate_rps: float = 0.0

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise UserError(f"device speed must be > 0 (1 = the profile's host), got {self.speed}")
        if self.battery is not None and not 0 <= self.battery <= 1:
            raise UserError(f"battery must be in [0, 1], got {self.battery}")
        if self.rate_rps < 0:
            raise UserError(f"a request rate must be >= 0, got {self.rate_rps}")

    @property
    def down_bps(self) -> float | None:
        return self.downlink_bps or (self.link.bps if self.link else None)


@dataclass(frozen=True)
class TierState:
    """A tier's capacity and load, and how far it is from the broker.

    ``servers`` counts the inference threads of all its workers; ``busy`` is
    the load other devices put on it, in Erlangs (threads busy on average);
    ``queued`` requests wait now. ``speed`` scales the profile (2 = twice as
    fast as the profile's host); ``service_ms`` holds measured compute times
    by segment (from, to), which replace the profile's prediction. ``link``
    None: the tier sits beside the broker. ``provider``: the execution provider
    its workers run on, whose profile prices it (``Options.tier_segment_ms``).
    """

    tier: Tier
    servers: int = 2
    busy: float = 0.0
    queued: int = 0
    speed: float = 1.0
    link: Link | None = None
    service_ms: Mapping[tuple[int, int], float] = field(default_factory=dict)
    provider: str = "cpu"

    def __post_init__(self) -> None:
        if self.servers < 1 or self.busy < 0 or self.queued < 0 or not self.speed > 0:
            raise UserError(
                f"{self.tier}: needs servers >= 1, busy >= 0, queued >= 0 and speed > 0"
            )


@dataclass(frozen=True)
class Overheads:
    """Costs the profiles do not see, per request (docs/planner.md, how they were measured).

    A pass through the broker costs ``broker_ms`` plus ``broker_ms_per_mb``
    per megabyte of payload (publishing, mosquitto, the receiver's network
    thread); the device's own handling of an offloaded request (the emulated
    link's thread, reading the answer) costs ``device_ms`` of wall time.
    ``device_cpu_ms`` is the device's per-request work outside the model
    (building the job, reading the outputs, packing the request or the
    result), CPU time at the profile's host speed: every plan pays it, device
    only included, divided by the device's speed like the head.
    """

    broker_ms: float = 1.0
    broker_ms_per_mb: float = 6.0
    device_ms: float = 1.5
    device_cpu_ms: float = 0.15
