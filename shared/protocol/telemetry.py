"""Typed telemetry documents: what each role publishes, retained, on ``telemetry/<role>/<id>``.

These are the planner's inputs, so each carries exactly what a cost model
needs and is validated on receipt (``parse_telemetry``): a device's link,
speed, battery and what it wants; a worker's capacity, queue and measured
service time per segment. The Last Will replaces a document with
``{"status": "offline"}``. Examples: docs/topics.md.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError

from splitmq.shared.errors import WireError
from splitmq.shared.protocol.document import Document, Frozen, describe
from splitmq.shared.protocol.ids import MAX_CUT, MAX_VERSION, MODEL_PATTERN, Tier
from splitmq.shared.protocol.plan import Objective, Plan

if TYPE_CHECKING:
    import numpy as np

Seconds = TypeVar("Seconds", float, "np.ndarray")
Count = Annotated[int, Field(ge=0)]
Ms = Annotated[float, Field(ge=0)]


class ModelRef(Frozen):
    model: str
    version: int = Field(ge=1, le=MAX_VERSION)


class LatencySummary(Frozen):
    """Median and 95th percentile of the last ``n`` samples."""

    p50_ms: Ms
    p95_ms: Ms
    n: int = Field(ge=1)


class ServiceTime(LatencySummary):
    """Measured compute time of one segment (``from`` -> ``to``; ``to`` null: the outputs)."""

    model: str
    version: int = Field(ge=1, le=MAX_VERSION)
    from_: int = Field(alias="from", ge=0, le=MAX_CUT)
    to: int | None = Field(None, ge=0, le=MAX_CUT)

    model_config = Frozen.model_config | {"populate_by_name": True}


class LinkEstimate(Frozen):
    """The device's own estimate of its uplink, from its requests; null until measured."""

    uplink_bps: float | None = Field(None, gt=0)
    rtt_ms: Ms | None = None
    age_s: Ms | None = None  # since the newest sample behind the estimate


class Wants(Frozen):
    """What the device asks of a plan (``splitmq device --objective ...``, the API's ``wants``)."""

    objective: Objective = "latency"
    accuracy: float = Field(0.99, ge=0, le=1)  # top-1 agreement floor with the unsplit model
    # top-1 accuracy to deliver on labelled data: exit thresholds are then chosen by their
    # measured accuracy (calibration with labels), the agreement floor judges the codecs
    accuracy_target: float | None = Field(None, ge=0, le=1)
    slo_ms: Ms | None = None
    max_bytes: int | None = Field(None, ge=1)  # byte budget per request on the uplink
    fps: float | None = Field(None, gt=0)  # frames it sends per second; null: as answers come


class Power(Frozen):
    """The device's power draw, the planner's energy model (docs/planner.md).

    Defaults are a small camera board: 2 W computing, 1 W with the radio
    sending, 0.2 W idle while it waits for an answer.
    """

    compute_w: float = Field(2.0, ge=0)
    radio_w: float = Field(1.0, ge=0)
    idle_w: float = Field(0.2, ge=0)

    def energy_mj(self, compute_s: Seconds, radio_s: Seconds, idle_s: Seconds) -> Seconds:
        """Millijoules for that much computing, sending and waiting (seconds each)."""
        return 1000 * (self.compute_w * compute_s + self.radio_w * radio_s + self.idle_w * idle_s)


class Telemetry(Document):
    role: str
    id: str
    status: Literal["online"] = "online"
    ts: float
    rps: float = Field(ge=0)  # requests finished per second, over the last 10 s
    in_flight: Count
    errors: dict[str, Count]  # requests that ended in a failure, by error code


class DeviceTelemetry(Telemetry):
    role: Literal["device"] = "device"
    model: ModelRef
    family: str | None = Field(None, pattern=MODEL_PATTERN)  # planned among its members
    LATER: ClassVar[frozenset[str]] = frozenset({"family"})

    def unset_later(self) -> dict[str, Any]:
        left = super().unset_later()
        return {**left, "plan": self.plan.unset_later()} if self.plan.family is None else left

    plan: Plan
    link: LinkEstimate
    speed: float = Field(gt=0, le=1)  # vs the host its profile was measured on
    battery: float | None = Field(None, ge=0, le=1)  # null: mains powered
    power: Power = Power()
    wants: Wants
    e2e: LatencySummary | None = None  # end-to-end latency of its answered requests
    answered: dict[str, Count]  # by tier: device, edge, cloud
    preprocess: LatencySummary | None = None  # its own time per frame to make the model input
    head: LatencySummary | None = None  # its own time per frame for the plan's head and encoding


class WorkerTelemetry(Telemetry):
    role: Tier
    threads: int = Field(ge=1)  # inference threads: requests served at once
    queued: Count  # received, waiting for a thread
    models: list[ModelRef]
    service: list[ServiceTime]  # per (model, version, segment)
    served: Count
    duplicates: Count
    answered: Count
    forwarded: dict[Tier, Count]  # escalated, by the tier forwarded to
    # an edge at a site: its WAN to the cloud tier, measured by probes (shared.runtime.wan)
    wan: LinkEstimate | None = None
    # the execution provider its sessions run on (cpu, cuda, ...): the planner reads that
    # provider's profile; null (workers before it): cpu
    provider: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,40}$")
    LATER: ClassVar[frozenset[str]] = frozenset({"wan", "provider"})


class PlannerTelemetry(Telemetry):
    role: Literal["planner"] = "planner"
    devices: Count  # devices it currently plans for
    plans: Count  # plans published since it started
    # messages the broker dropped since it started ($SYS); None until the broker said
    broker_dropped: Count | None = None
    # at a site: whether its bridge to the cloud is up (None: not at a site, or not heard)
    wan_up: bool | None = None
    LATER: ClassVar[frozenset[str]] = frozenset({"wan_up"})


class Offline(Frozen):
    """The Last Will (and a clean close): the role is gone."""

    status: Literal["offline"] = "offline"


OFFLINE = Offline()
TelemetryDoc = DeviceTelemetry | WorkerTelemetry | PlannerTelemetry | Offline
_BY_ROLE: dict[str, type[Telemetry]] = {
    "device": DeviceTelemetry,
    "edge": WorkerTelemetry,
    "cloud": WorkerTelemetry,
    "planner": PlannerTelemetry,
}


def parse_telemetry(payload: bytes, where: str = "telemetry") -> TelemetryDoc:
    """A received telemetry payload as its typed document; WireError names the field."""
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{where}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise WireError(f"{where}: expected a JSON object")
    if raw.get("status") == "offline":
        try:
            return Offline.model_validate(raw)
        except ValidationError as exc:
            raise WireError(f"{where}: {describe(exc)}") from None
    kind = _BY_ROLE.get(str(raw.get("role")))
    if kind is None:
        raise WireError(f"{where}: role: {raw.get('role')!r} is not one of {', '.join(_BY_ROLE)}")
    doc = kind.parse(raw, where)
    assert isinstance(doc, DeviceTelemetry | WorkerTelemetry | PlannerTelemetry)
    return doc
