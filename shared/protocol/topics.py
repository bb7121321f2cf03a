"""Every MQTT topic splitmq uses is built and parsed here (docs/topics.md).

Ids are validated when a topic is built, so a device id like ``cam/+`` can
never widen a subscription or write into someone else's subtree, and again
when a request topic is parsed, because the device id in the topic is what
the broker's ACL enforces and what workers reply to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from splitmq.shared.errors import UserError, WireError
from splitmq.shared.protocol.ids import (
    CUT_RULE,
    ID_RULE,
    MODEL_RULE,
    TIERS,
    Tier,
    is_cut,
    is_cut_text,
    is_id,
    is_model_name,
    is_tier,
)

__all__ = ["DEFAULT_PREFIX", "RequestTopic", "Topics"]

DEFAULT_PREFIX = "splitmq/v1"
_PREFIX_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RequestTopic(NamedTuple):
    """A parsed request topic: which tier, model, cut and device it is for."""

    tier: Tier
    model: str
    cut: int
    device: str


def _check_id(kind: str, value: str) -> str:
    if not is_id(value):
        raise UserError(f"invalid {kind} {value!r}: use {ID_RULE}")
    return value


def _check_model(value: str) -> str:
    if not is_model_name(value):
        raise UserError(f"invalid model name {value!r}: use {MODEL_RULE}")
    return value


def _check_cut(value: int) -> int:
    if not is_cut(value):
        raise UserError(f"invalid cut {value!r}: use {CUT_RULE}")
    return value


def _check_tier(value: str) -> Tier:
    if not is_tier(value):
        raise UserError(f"invalid tier {value!r}: use one of {', '.join(TIERS)}")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree under one prefix (``Settings.topic_prefix``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        levels = self.prefix.split("/") if isinstance(self.prefix, str) else [None]
        if not all(isinstance(lv, str) and _PREFIX_LEVEL.fullmatch(lv) for lv in levels):
            raise UserError(
                f"invalid topic prefix {self.prefix!r}: use '/'-separated levels of "
                "A-Z a-z 0-9 _ - . (no wildcards, no leading '$' or '/')"
            )

    # -- topics one publishes to ---------------------------------------------

    def request(self, tier: Tier, model: str, cut: int, device: str) -> str:
        """``<prefix>/<tier>/<model>/<cut>/<device>``: a hop for the edge or cloud tier."""
        _check_tier(tier)
        return (
            f"{self.prefix}/{tier}/{_check_model(model)}/{_check_cut(cut)}/"
            f"{_check_id('device id', device)}"
        )

    def edge_request(self, model: str, cut: int, device: str) -> str:
        return self.request("edge", model, cut, device)

    def cloud_request(self, model: str, cut: int, device: str) -> str:
        return self.request("cloud", model, cut, device)

    def result(self, device: str) -> str:
        return f"{self.prefix}/result/{_check_id('device id', device)}"

    def error(self, device: str) -> str:
        return f"{self.prefix}/error/{_check_id('device id', device)}"

    def telemetry(self, role: str, role_id: str) -> str:
        """Retained status of one process; its Last Will says ``{"status": "offline"}``."""
        return f"{self.prefix}/telemetry/{_check_id('role', role)}/{_check_id('id', role_id)}"

    def plan(self, device: str, model: str) -> str:
        """Retained plan the planner publishes for one device and model."""
        return f"{self.prefix}/plan/{_check_id('device id', device)}/{_check_model(model)}"

    # -- subscription filters --------------------------------------------------

    def shared_requests(self, tier: Tier, group: str | None = None) -> str:
        """``$share/<group>/<prefix>/<tier>/+/+/+``: workers of a tier share the load."""
        tier = _check_tier(tier)
        group = _check_id("share group", group or tier)
        return f"$share/{group}/{self.prefix}/{tier}/+/+/+"

    def edge_requests_shared(self) -> str:
        return self.shared_requests("edge")

    def cloud_requests_shared(self) -> str:
        return self.shared_requests("cloud")

    def telemetry_filter(self) -> str:
        """Every role's telemetry (the planner's subscription)."""
        return f"{self.prefix}/telemetry/+/+"

    def plans_filter(self, device: str) -> str:
        """Every plan for one device, one per model."""
        return f"{self.prefix}/plan/{_check_id('device id', device)}/+"

    def everything(self) -> str:
        """``<prefix>/#``: what ``mosquitto_sub -v -t`` watches."""
        return f"{self.prefix}/#"

    # -- parsing ---------------------------------------------------------------

    def parse_request(self, topic: str) -> RequestTopic:
        """Turn a received request topic back into its parts; WireError names the bad part."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            raise WireError(f"request topic {topic!r} is not under prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) != 4:
            raise WireError(
                f"request topic {topic!r} must be {self.prefix}/<tier>/<model>/<cut>/<device>"
            )
        tier, model, cut, device = parts
        if not is_tier(tier):
            raise WireError(f"request topic {topic!r}: unknown tier {tier!r}")
        if not is_model_name(model):
            raise WireError(f"request topic {topic!r}: bad model name {model!r} ({MODEL_RULE})")
        if not is_cut_text(cut):
            raise WireError(f"request topic {topic!r}: bad cut {cut!r} ({CUT_RULE})")
        if not is_id(device):
            raise WireError(f"request topic {topic!r}: bad device id {device!r} ({ID_RULE})")
        return RequestTopic(_check_tier(tier), model, int(cut), device)
