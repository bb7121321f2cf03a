"""The plan: where a device cuts, how it compresses, and the route its requests take.

Plans come from their parts (``model.plans.make_plan``), a JSON file (``splitmq
device --plan``) or the planner's retained ``plan/<device>/<model>`` topic;
all three are this one document (docs/topics.md, Plan), validated the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from splitmq.shared.codecs import parse_codec
from splitmq.shared.errors import CodecError, UserError, WireError
from splitmq.shared.protocol.document import Document, Frozen
from splitmq.shared.protocol.ids import (
    ID_RULE,
    MAX_CUT,
    MAX_VERSION,
    MODEL_RULE,
    is_id,
    is_model_name,
)
from splitmq.shared.protocol.wire import Hop

#: What a plan minimises per request.
Objective = Literal["latency", "energy", "bytes"]
#: How a device's own fallback plan's reason starts: a tier of its plan stopped answering.
FELL_BACK = "fell back: "


class Prediction(Frozen):
    """What the planner expects of an option: per request, from the device's side.

    ``agreement`` is the top-1 agreement with the unsplit model that the
    calibration table measured for this option (a bound built only from
    measured rates where an option combines several lossy stages): never assumed.
    """

    latency_ms: float = Field(ge=0)
    bytes: float = Field(ge=0)  # sent by the device per request
    energy_mj: float = Field(ge=0)
    agreement: float = Field(ge=0, le=1)


class Option(Frozen):
    """Where to cut, how to compress and which route to take; ``route`` empty: device-only."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    cut: int = Field(ge=0, le=MAX_CUT)
    codec: str
    route: tuple[Hop, ...] = ()
    exit: float | None = Field(None, ge=0, le=1)
    predicted: Prediction | None = None

    @field_validator("route", mode="before")
    @classmethod
    def _hops(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        try:
            return tuple(hop if isinstance(hop, Hop) else Hop(**hop) for hop in value)
        except (TypeError, WireError) as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _codec_fits_cut(self) -> Self:
        check_codec_at(self.codec, self.cut)
        return self

    @property
    def device_only(self) -> bool:
        return not self.route

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tiers the route goes through, in order."""
        return tuple(hop.tier for hop in self.route)

    @property
    def words(self) -> str:
        """The option in a few words, for logs, timelines and the dashboard."""
        if self.device_only:
            return "device-only"
        return f"cut {self.cut} {self.codec} -> {'/'.join(self.tiers)}"

    def to_json_dict(self) -> dict[str, Any]:
        """The document as JSON-ready values (hops as maps)."""
        return json.loads(self.model_dump_json(by_alias=True))


class Plan(Option, Document):
    """An option for one device and model version, with why it was chosen.

    A planner's plan carries its ``predicted`` costs and ranked
    ``alternatives``: the options a device falls back to, in order, when a
    tier of its plan stops answering.
    """

    device: str | None = None
    model: str
    version: int = Field(ge=1, le=MAX_VERSION)
    family: str | None = None  # the family the planner chose ``model`` from, for the device
    LATER: ClassVar[frozenset[str]] = frozenset({"family"})
    reason: str = "static plan"
    ts: float = Field(default_factory=time.time)
    objective: Objective | None = None  # what the planner minimised; None: not planned
    alternatives: tuple[Option, ...] = ()

    @field_validator("device")
    @classmethod
    def _device_id(cls, value: str | None) -> str | None:
        if value is not None and not is_id(value):
            raise ValueError(f"{value!r} is not {ID_RULE}")
        return value

    @field_validator("family")
    @classmethod
    def _family_name(cls, value: str | None) -> str | None:
        if value is not None and not is_model_name(value):
            raise ValueError(f"{value!r} is not {MODEL_RULE}")
        return value

    @property
    def fell_back(self) -> bool:
        """Whether the device moved to this plan itself, its plan's tier gone: no choice
        of the planner's, so none its hysteresis should keep."""
        return self.reason.startswith(FELL_BACK)

    @property
    def topic_model(self) -> str:
        """What its topic names after the device: the family a device asked for, or the
        model."""
        return self.family or self.model

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())

    def for_device(self, device: str) -> Plan:
        return self.model_copy(update={"device": device})

    def fallback(self, option: Option, reason: str) -> Plan:
        """This plan's device, model version and alternatives, with ``option`` in force."""
        fields = {name: getattr(option, name) for name in Option.model_fields}
        return self.model_copy(update={**fields, "reason": reason, "ts": time.time()})

    def same_option(self, other: Option) -> bool:
        """Whether ``other`` cuts, compresses and routes as this plan does."""
        return (self.cut, self.codec, self.route, self.exit) == (
            other.cut,
            other.codec,
            other.route,
            other.exit,
        )


def check_codec_at(codec: str, cut: int) -> None:
    """A known codec name, and an input codec (``u8``, ``jpeg:Q``) only at cut 0."""
    try:
        name = parse_codec(codec)
    except CodecError as exc:
        raise ValueError(str(exc)) from None
    if name.is_input and cut != 0:
        raise ValueError(f"codec {codec} sends the input image: it needs cut 0, not {cut}")


def parse_plan(doc: object, where: str = "plan") -> Plan:
    """A plan document (file or topic) -> Plan; UserError naming the field otherwise."""
    if not isinstance(doc, dict):
        raise UserError(f"{where}: expected a JSON object")
    try:
        return Plan.parse(doc, where)
    except WireError as exc:
        raise UserError(str(exc)) from None


def load_plan_file(path: Path) -> Plan:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the plan ({exc.strerror})") from exc
    try:
        return Plan.parse(text, str(path))
    except WireError as exc:
        raise UserError(str(exc)) from None
