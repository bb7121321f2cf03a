"""One reader of the retained telemetry and plan topics, for every role that watches them.

The planner and the dashboard both listen to ``telemetry/<role>/<id>`` and
``plan/<device>/<model>``; deciding here what such a message says keeps them from
disagreeing. A message is believed only once its topic parses, its document
validates, and the role and id (telemetry) or the device and model (plan) the
document names are its topic's, so one publisher cannot speak for another. An
empty retained payload means the topic was cleared: the role or the plan is gone
for good. The answer is one typed event; what to do with it (keep, forget, count,
show) is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from splitmq.shared.errors import WireError
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import Offline, TelemetryDoc, parse_telemetry
from splitmq.shared.protocol.topics import Topics

__all__ = ["Heard", "Rejected", "read_plan", "read_telemetry"]

D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Heard(Generic[D]):
    """What a retained topic says: its two levels, (role, id) or (device, model), and its
    document (telemetry: maybe the Last Will, ``Offline``); None: the topic was cleared."""

    key: tuple[str, str]
    doc: D | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed a check, never to be used; ``why`` names the topic and the
    problem. ``key`` is the topic's two levels when the topic itself was valid: what the
    topic held before is no longer there."""

    topic: str
    why: str
    key: tuple[str, str] | None = None


def read_telemetry(topics: Topics, topic: str, payload: bytes) -> Heard[TelemetryDoc] | Rejected:
    """A retained telemetry message, checked (see module docstring)."""
    return _read(topic, payload, topics.parse_telemetry, parse_telemetry, _other_sender)


def read_plan(topics: Topics, topic: str, payload: bytes) -> Heard[Plan] | Rejected:
    """A retained plan, checked (see module docstring)."""
    return _read(topic, payload, topics.parse_plan, Plan.parse, _other_target)


def _read(
    topic: str,
    payload: bytes,
    parse_topic: Callable[[str], tuple[str, str]],
    parse_doc: Callable[[bytes, str], D],
    forged: Callable[[D, tuple[str, str]], str | None],
) -> Heard[D] | Rejected:
    try:
        key = parse_topic(topic)
    except WireError as exc:
        return Rejected(topic, str(exc))
    if not payload:
        return Heard(key, None)
    try:
        doc = parse_doc(payload, topic)
    except WireError as exc:
        return Rejected(topic, str(exc), key)
    lie = forged(doc, key)
    return Heard(key, doc) if lie is None else Rejected(topic, f"{topic}: forged: {lie}", key)


def _other_sender(doc: TelemetryDoc, key: tuple[str, str]) -> str | None:
    """Whom else the document says it is from; None: the topic's role and id (a Last
    Will names nobody: it is the topic's)."""
    if isinstance(doc, Offline) or (doc.role, doc.id) == key:
        return None
    return f"the document is from {doc.role} {doc.id!r}"


def _other_target(plan: Plan, key: tuple[str, str]) -> str | None:
    """Which other device or model the plan is for; None: the topic's (a plan naming no
    device is any device's, so it may sit on one device's topic; a family's plan sits on
    the family's topic, whichever member it runs)."""
    device, model = key
    if plan.device in (None, device) and plan.topic_model == model:
        return None
    return f"the plan is for device {plan.device!r}, model {plan.topic_model!r}"
