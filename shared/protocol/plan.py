"""A plan: where a device cuts, how it compresses, and the route its requests take.

Plans come from flags or a JSON file today and from the planner's retained
``plan/<device>/<model>`` topic later; all three are the same document
(docs/wire-format.md, Plan), validated the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitmq.shared.codecs import parse_codec
from splitmq.shared.errors import CodecError, UserError, WireError
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.protocol.wire import Hop

TIERS = ("edge", "cloud")


@dataclass(frozen=True)
class Plan:
    model: str
    version: int
    cut: int
    codec: str
    route: tuple[Hop, ...]  # empty: device-only, nothing goes on the network
    exit: float | None = None
    reason: str = "static plan"
    ts: float = field(default_factory=time.time)

    @property
    def device_only(self) -> bool:
        return not self.route

    def to_json(self, device: str) -> dict[str, Any]:
        return {
            "device": device,
            "model": self.model,
            "version": self.version,
            "cut": self.cut,
            "codec": self.codec,
            "exit": self.exit,
            "reason": self.reason,
            "ts": self.ts,
            "route": [
                {"tier": h.tier, "to": h.to, "exit": h.exit, "codec": h.codec} for h in self.route
            ],
        }


def make_plan(
    mv: ModelVersion,
    cut: int,
    codec: str = "raw",
    tier: str = "edge",
    cloud_cut: int | None = None,
    exit_threshold: float | None = None,
    forward_codec: str | None = None,
    reason: str = "static plan",
) -> Plan:
    """A plan from flags: device runs 0 -> cut; ``tier`` continues; with ``cloud_cut``
    the edge stops there (answering early when an exit head is confident) and the
    cloud finishes."""
    mv.check_cut(cut)
    _check_codec(codec, cut)
    if tier not in TIERS:
        raise UserError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if cut == mv.last_cut:
        route: tuple[Hop, ...] = ()
    elif cloud_cut is None:
        route = (Hop(tier, None, None),)
    else:
        if tier != "edge":
            raise UserError("a cloud cut needs the edge tier first (--tier edge)")
        mv.check_cut(cloud_cut)
        if not cut < cloud_cut < mv.last_cut:
            raise UserError(f"the cloud cut must be between {cut + 1} and {mv.last_cut - 1}")
        if exit_threshold is not None and not 0 <= exit_threshold <= 1:
            raise UserError(f"the exit threshold must be in [0, 1], got {exit_threshold}")
        fwd = forward_codec or ("fp16" if codec in ("u8",) or codec.startswith("jpeg") else codec)
        _check_codec(fwd, cloud_cut)
        route = (Hop("edge", cloud_cut, exit_threshold, fwd), Hop("cloud", None, None))
    return Plan(mv.name, mv.version, cut, codec, route, exit_threshold, reason)


def parse_plan(doc: Any, where: str = "plan") -> Plan:
    """A plan document (file or topic) -> Plan, with errors that name the field."""
    if not isinstance(doc, dict):
        raise UserError(f"{where}: expected a JSON object")
    try:
        route = tuple(
            Hop(h["tier"], h.get("to"), h.get("exit"), h.get("codec")) for h in doc.get("route", [])
        )
        plan = Plan(
            model=str(doc["model"]),
            version=int(doc["version"]),
            cut=int(doc["cut"]),
            codec=str(doc["codec"]),
            route=route,
            exit=doc.get("exit"),
            reason=str(doc.get("reason", "")),
            ts=float(doc.get("ts", time.time())),
        )
    except KeyError as exc:
        raise UserError(f"{where}: missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError, WireError, AttributeError) as exc:
        raise UserError(f"{where}: {exc}") from exc
    _check_codec(plan.codec, plan.cut)
    return plan


def load_plan_file(path: Path) -> Plan:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the plan ({exc.strerror})") from exc
    except ValueError as exc:
        raise UserError(f"{path}: not JSON ({exc})") from exc
    return parse_plan(doc, str(path))


def _check_codec(codec: str, cut: int) -> None:
    try:
        name = parse_codec(codec)
    except CodecError as exc:
        raise UserError(str(exc)) from exc
    if name.base in ("u8", "jpeg") and cut != 0:
        raise UserError(f"codec {codec} sends the input image: it needs cut 0, not {cut}")
