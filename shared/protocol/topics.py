"""Every MQTT topic splitmq uses is built and parsed here (docs/topics.md).

Ids are validated when a topic is built, so a device id like ``cam/+`` can
never widen a subscription or write into someone else's subtree, and again
when a request topic is parsed, because the device id in the topic is what
the broker's ACL enforces and what workers reply to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
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

__all__ = ["ANY", "BROKER_DROPPED", "DEFAULT_PREFIX", "RequestTopic", "Topics"]

DEFAULT_PREFIX = "splitmq/v1"
#: Mosquitto's count of messages it dropped (full queues), every ``sys_interval``.
BROKER_DROPPED = "$SYS/broker/publish/messages/dropped"
#: One topic level matching any id, model or cut, in ``Topics.filters()``.
ANY = "+"
#: The level under the prefix where sites' trees start on the cloud broker.
SITE = "site"
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
    """The topic tree under one prefix (``Settings.topic_prefix``).

    ``filters()`` is the same tree with ``ANY`` (``+``) allowed for any id, model or
    cut: the ACL is written from the very builders the roles publish with, so the
    access rules cannot drift from the topics (``splitmq.shared.protocol.access``).
    """

    prefix: str = DEFAULT_PREFIX
    wildcards: bool = False
    #: A site's tree on the cloud broker, ``<prefix>/site/<site>`` (docs/operations.md):
    #: its bridge maps the site broker's ``<prefix>`` there, so ids stay the site's own.
    site: str | None = None

    def __post_init__(self) -> None:
        levels = self.prefix.split("/") if isinstance(self.prefix, str) else [None]
        if self.site is not None and not (self._any(self.site) or is_id(self.site)):
            raise UserError(f"invalid site {self.site!r}: use {ID_RULE}")
        if not all(isinstance(lv, str) and _PREFIX_LEVEL.fullmatch(lv) for lv in levels):
            raise UserError(
                f"invalid topic prefix {self.prefix!r}: use '/'-separated levels of "
                "A-Z a-z 0-9 _ - . (no wildcards, no leading '$' or '/')"
            )

    @property
    def root(self) -> str:
        """Where this tree's topics start: the prefix, or a site's tree under it."""
        return self.prefix if self.site is None else f"{self.prefix}/{SITE}/{self.site}"

    def at_site(self, site: str) -> Topics:
        """The tree a site's bridge maps this prefix to on the cloud broker."""
        return replace(self, site=self._id("site", site))

    def scoped(self, topic: str) -> Topics:
        """The tree ``topic`` belongs to: a site's (``<prefix>/site/<site>/...``) or this."""
        head = f"{self.prefix}/{SITE}/"
        if self.site is not None or not topic.startswith(head):
            return self
        site = topic[len(head) :].split("/", 1)[0]
        if not is_id(site):
            raise WireError(f"topic {topic!r}: bad site {site!r} ({ID_RULE})")
        return self.at_site(site)

    def filters(self) -> Topics:
        """This tree with ``+`` accepted in place of any id, model or cut."""
        return replace(self, wildcards=True)

    def _any(self, value: object) -> bool:
        return self.wildcards and value == ANY

    def _id(self, kind: str, value: str) -> str:
        return value if self._any(value) else _check_id(kind, value)

    def _model(self, value: str) -> str:
        return value if self._any(value) else _check_model(value)

    # -- topics one publishes to ---------------------------------------------

    def request(self, tier: Tier, model: str, cut: int | str, device: str) -> str:
        """``<prefix>/<tier>/<model>/<cut>/<device>``: a hop for the edge or cloud tier."""
        _check_tier(tier)
        level = cut if self._any(cut) else _check_cut(cut)  # type: ignore[arg-type]
        return f"{self.root}/{tier}/{self._model(model)}/{level}/{self._id('device id', device)}"

    def edge_request(self, model: str, cut: int, device: str) -> str:
        return self.request("edge", model, cut, device)

    def cloud_request(self, model: str, cut: int, device: str) -> str:
        return self.request("cloud", model, cut, device)

    def result(self, device: str) -> str:
        return f"{self.root}/result/{self._id('device id', device)}"

    def error(self, device: str) -> str:
        return f"{self.root}/error/{self._id('device id', device)}"

    def telemetry(self, role: str, role_id: str) -> str:
        """Retained status of one process; its Last Will says ``{"status": "offline"}``."""
        return f"{self.root}/telemetry/{self._id('role', role)}/{self._id('id', role_id)}"

    def plan(self, device: str, model: str) -> str:
        """Retained plan the planner publishes for one device and model."""
        return f"{self.root}/plan/{self._id('device id', device)}/{self._model(model)}"

    def frame(self, model: str, device: str) -> str:
        """A bare JPEG/PNG from a camera that runs no splitmq: the edge runs the model."""
        return f"{self.root}/frame/{self._model(model)}/{self._id('device id', device)}"

    def model(self, name: str) -> str:
        """Retained announcement of a model's newest version in the pool."""
        return f"{self.root}/model/{self._model(name)}"

    def probe(self, device: str) -> str:
        """Where a device sends link probes: nobody subscribes, only the PUBACK matters."""
        return f"{self.root}/probe/{self._id('device id', device)}"

    def ping(self, edge: str) -> str:
        """An edge's WAN probe: a cloud worker answers it on ``pong(edge)`` at once."""
        return f"{self.root}/ping/{self._id('edge id', edge)}"

    def pong(self, edge: str) -> str:
        """The cloud's answer to ``ping(edge)``: the edge times the WAN's round trip."""
        return f"{self.root}/pong/{self._id('edge id', edge)}"

    # -- subscription filters --------------------------------------------------

    def shared_requests(self, tier: Tier, group: str | None = None) -> str:
        """``$share/<group>/<prefix>/<tier>/+/+/+``: workers of a tier share the load."""
        tier = _check_tier(tier)
        group = _check_id("share group", group or tier)
        return f"$share/{group}/{self.root}/{tier}/+/+/+"

    def edge_requests_shared(self) -> str:
        return self.shared_requests("edge")

    def cloud_requests_shared(self) -> str:
        return self.shared_requests("cloud")

    def shared_pings(self) -> str:
        """``$share/cloud/<root>/ping/+``: edges' WAN probes, answered by one cloud worker."""
        return f"$share/cloud/{self.root}/ping/+"

    def shared_frames(self) -> str:
        """``$share/edge/<prefix>/frame/+/+``: camera frames, shared by the edge workers."""
        return f"$share/edge/{self.root}/frame/+/+"

    def models_filter(self) -> str:
        """Every model announcement (workers and the planner)."""
        return f"{self.root}/model/+"

    def telemetry_filter(self) -> str:
        """Every role's telemetry (the planner's subscription)."""
        return f"{self.root}/telemetry/+/+"

    def role_filter(self, role: str) -> str:
        """The telemetry of every process of one role, e.g. every edge worker."""
        return f"{self.root}/telemetry/{_check_id('role', role)}/+"

    def plans_filter(self, device: str) -> str:
        """Every plan for one device, one per model."""
        return f"{self.root}/plan/{_check_id('device id', device)}/+"

    def plans_all(self) -> str:
        """Every plan of every device (the planner reads its own retained plans back)."""
        return f"{self.root}/plan/+/+"

    def everything(self) -> str:
        """``<prefix>/#``: what ``mosquitto_sub -v -t`` watches."""
        return f"{self.prefix}/#"

    # -- parsing ---------------------------------------------------------------

    def parse_telemetry(self, topic: str) -> tuple[str, str]:
        """``telemetry/<role>/<id>`` -> (role, id); WireError otherwise."""
        role, role_id = self._two_levels(topic, "telemetry", "<role>/<id>")
        if not (is_id(role) and is_id(role_id)):
            raise WireError(f"telemetry topic {topic!r}: role and id must be {ID_RULE}")
        return role, role_id

    def parse_plan(self, topic: str) -> tuple[str, str]:
        """``plan/<device>/<model>`` -> (device, model); WireError otherwise."""
        device, model = self._two_levels(topic, "plan", "<device>/<model>")
        if not (is_id(device) and is_model_name(model)):
            raise WireError(f"plan topic {topic!r}: bad device id or model name")
        return device, model

    def parse_frame(self, topic: str) -> tuple[str, str]:
        """``frame/<model>/<device>`` -> (model, device); WireError otherwise."""
        model, device = self._two_levels(topic, "frame", "<model>/<device>")
        if not (is_model_name(model) and is_id(device)):
            raise WireError(f"frame topic {topic!r}: bad model name or device id")
        return model, device

    def parse_ping(self, topic: str) -> str:
        """``ping/<edge>`` -> the edge's id; WireError otherwise."""
        return self._one_level(topic, "ping", "<edge id>", is_id, ID_RULE)

    def parse_model(self, topic: str) -> str:
        """``model/<name>`` -> name; WireError otherwise."""
        return self._one_level(topic, "model", "<name>", is_model_name, MODEL_RULE)

    def _one_level(
        self, topic: str, kind: str, shape: str, valid: Callable[[object], bool], rule: str
    ) -> str:
        head = f"{self.root}/{kind}/"
        level = topic[len(head) :] if topic.startswith(head) else ""
        if not valid(level):
            raise WireError(f"{kind} topic {topic!r} must be {head}{shape} ({rule})")
        return level

    def _two_levels(self, topic: str, kind: str, shape: str) -> tuple[str, str]:
        head = f"{self.root}/{kind}/"
        parts = topic[len(head) :].split("/") if topic.startswith(head) else []
        if len(parts) != 2:
            raise WireError(f"{kind} topic {topic!r} must be {head}{shape}")
        return parts[0], parts[1]

    def device_of_request(self, topic: str) -> str | None:
        """The device a request topic names, even when another level is bad: the last of
        the five levels, if it is a valid id. The ACL lets a device write only topics that
        end in its own id, so a worker can tell that device what was wrong."""
        head = f"{self.root}/"
        parts = topic[len(head) :].split("/") if topic.startswith(head) else []
        return parts[3] if len(parts) == 4 and is_id(parts[3]) else None

    def parse_request(self, topic: str) -> RequestTopic:
        """Turn a received request topic back into its parts; WireError names the bad part."""
        head = f"{self.root}/"
        if not topic.startswith(head):
            raise WireError(f"request topic {topic!r} is not under prefix {self.root!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) != 4:
            raise WireError(
                f"request topic {topic!r} must be {self.root}/<tier>/<model>/<cut>/<device>"
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
