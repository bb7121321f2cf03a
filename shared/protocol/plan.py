"""The plan: where a device cuts, how it compresses, and the route its requests take.

Plans come from flags (``model.plans.make_plan``), a JSON file (``splitmq
device --plan``) or the planner's retained ``plan/<device>/<model>`` topic;
all three are this one document (docs/topics.md, Plan), validated the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from splitmq.shared.codecs import parse_codec
from splitmq.shared.errors import CodecError, UserError, WireError
from splitmq.shared.protocol.document import Document
from splitmq.shared.protocol.ids import ID_RULE, MAX_CUT, MAX_VERSION, is_id
from splitmq.shared.protocol.wire import Hop


class Plan(Document):
    """``route`` empty means device-only: nothing goes on the network."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    device: str | None = None
    model: str
    version: int = Field(ge=1, le=MAX_VERSION)
    cut: int = Field(ge=0, le=MAX_CUT)
    codec: str
    route: tuple[Hop, ...] = ()
    exit: float | None = Field(None, ge=0, le=1)
    reason: str = "static plan"
    ts: float = Field(default_factory=time.time)

    @field_validator("device")
    @classmethod
    def _device_id(cls, value: str | None) -> str | None:
        if value is not None and not is_id(value):
            raise ValueError(f"{value!r} is not {ID_RULE}")
        return value

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
    def _codec_fits_cut(self) -> Plan:
        check_codec_at(self.codec, self.cut)
        return self

    @property
    def device_only(self) -> bool:
        return not self.route

    def for_device(self, device: str) -> Plan:
        return self.model_copy(update={"device": device})

    def to_json_dict(self) -> dict[str, Any]:
        """The document as JSON-ready values (hops as maps)."""
        doc = self.model_dump(exclude={"route"})
        doc["route"] = [
            {"tier": h.tier, "to": h.to, "exit": h.exit, "codec": h.codec} for h in self.route
        ]
        return doc


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
