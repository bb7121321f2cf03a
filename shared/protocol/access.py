"""Who may publish and subscribe where: the topic contract's access rules.

Each role's grants are built with the same ``Topics`` builders the role uses to
publish and subscribe (``Topics.filters()`` puts ``+`` where any id may go), so
the broker's ACL (``splitmq.broker.dynsec`` writes it from ``grants``) cannot
drift from what the code does. A device is its user name: it writes only topics
ending in its own id and reads only its own results, errors and plans, which is
what lets workers trust the device id in a request topic. A read is also a right
to subscribe, in one form only: a worker group's topics only through that group's
shared subscription, so nobody else can join the group and be dealt its messages.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

from splitmq.shared.protocol.ids import TIERS, Tier
from splitmq.shared.protocol.sites import BRIDGE_STATES, crossings
from splitmq.shared.protocol.topics import ANY, BROKER_DROPPED, Topics

Role = Literal["device", "site", "edge", "cloud", "planner", "monitor", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
#: What each role is for, for ``splitmq secure`` tables and docs/security.md.
PURPOSE: dict[Role, str] = {
    "device": "runs heads, asks for answers; one user per device, named by its id",
    "site": "a site broker's bridge: its own tree, what crosses (shared.protocol.sites)",
    "edge": "edge workers: serve edge requests, answer, forward to the cloud",
    "cloud": "cloud workers: serve cloud requests and answer",
    "planner": "reads all telemetry, the broker's drop count and bridge state, writes plans",
    "monitor": "reads everything, writes nothing (dashboards, results stores, mosquitto_sub)",
    "operator": "announces new model versions (`splitmq pool add`, `models build`)",
    "admin": "adds users to a running broker (`secure add-device`, `add-site`); nothing else",
}
#: The roles with a user per device or site, named by its id.
NAMED_ROLES: tuple[Role, ...] = ("device", "site")
#: The roles with one user each, named as the role: no device may be called so.
SERVICE_ROLES: tuple[Role, ...] = tuple(r for r in ROLES if r not in NAMED_ROLES)

Access = Literal["read", "write"]


#: mosquitto's dynamic security plugin takes its commands here and answers on /response.
CONTROL = "$CONTROL/dynamic-security/v1"


class Grant(NamedTuple):
    access: Access
    topic: str  # an MQTT filter
    group: str | None = None  # read only through ``$share/<group>/<topic>``

    @property
    def subscription(self) -> str:
        """The one filter a reader may subscribe with to read ``topic``."""
        return f"$share/{self.group}/{self.topic}" if self.group else self.topic


def grants(topics: Topics, role: Role, user: str) -> list[Grant]:
    """What ``user`` of ``role`` may read and write under ``topics``' prefix."""
    t = topics.filters()
    if role == "device":
        return [
            *(Grant("write", t.request(tier, ANY, ANY, user)) for tier in TIERS),
            Grant("write", t.telemetry("device", user)),
            Grant("write", t.probe(user)),
            Grant("write", t.frame(ANY, user)),
            Grant("write", t.result(user)),  # what it answered itself
            Grant("read", t.result(user)),
            Grant("read", t.error(user)),
            Grant("read", t.plan(user, ANY)),
        ]
    if role == "site":  # on the cloud broker: only its tree, only what crosses
        return [
            Grant("write" if c.direction == "out" else "read", c.remote)
            for c in crossings(topics, user)
        ]
    if role == "edge":
        return [
            *_tier(t, "edge"),
            Grant("read", t.model(ANY)),
            Grant("write", t.telemetry("edge", ANY)),
            Grant("write", t.request("cloud", ANY, ANY, ANY)),
            Grant("read", t.frame(ANY, ANY), group="edge"),
            Grant("write", t.ping(ANY)),
            Grant("read", t.pong(ANY)),
        ]
    if role == "cloud":  # serves its own tree and every site's
        sites = t.at_site(ANY)
        return [
            *(g for tree in (t, sites) for g in _tier(tree, "cloud")),
            *(g for tree in (t, sites) for g in _pings(tree)),
            Grant("read", t.model(ANY)),
            Grant("write", t.telemetry("cloud", ANY)),
        ]
    if role == "planner":
        return [
            Grant("read", t.telemetry(ANY, ANY)),
            Grant("read", t.plan(ANY, ANY)),
            Grant("write", t.plan(ANY, ANY)),
            Grant("write", t.telemetry("planner", ANY)),
            Grant("read", t.model(ANY)),
            Grant("read", BROKER_DROPPED),  # surfaced in its telemetry
            Grant("read", BRIDGE_STATES),  # a site's WAN: cloud plans only while it is up
        ]
    if role == "operator":
        return [Grant("write", t.model(ANY)), Grant("read", t.model(ANY))]
    if role == "monitor":
        return [Grant("read", topics.everything()), Grant("read", "$SYS/#")]
    if role == "admin":
        return [Grant("write", CONTROL), Grant("read", f"{CONTROL}/response")]
    raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def _tier(t: Topics, tier: Tier) -> list[Grant]:
    """A tier's requests (through its group only), and its answers to any device."""
    return [
        Grant("read", t.request(tier, ANY, ANY, ANY), group=tier),
        Grant("write", t.result(ANY)),
        Grant("write", t.error(ANY)),
    ]


def _pings(t: Topics) -> list[Grant]:
    """The cloud's side of the edges' WAN probes."""
    return [Grant("read", t.ping(ANY), group="cloud"), Grant("write", t.pong(ANY))]
