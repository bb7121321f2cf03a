"""What crosses between a site broker and the cloud broker (docs/operations.md, sites).

A site runs its own broker with its devices, cameras, edge workers and planner on
the topic prefix as usual. Its bridge maps that tree onto the site's own tree on
the cloud broker, ``<prefix>/site/<site>`` (``Topics.at_site``), so device ids only
need to be unique within their site, and the cloud broker's ACL confines each site
to its tree. Only these topics cross, each one way:

- **up**: escalations to the cloud tier, the site's telemetry (devices, edges,
  planner: for the cloud's dashboards), and the edges' WAN probes (``ping``);
- **down** from the site's tree: results, errors and probe answers (``pong``);
- **down** from the shared tree: model announcements and the cloud workers'
  telemetry (the site's planner plans the cloud tier with it).

Plans do not cross: each site's planner plans its own devices at the site, where a
WAN outage cannot cut it off from them. The bridge config (``broker.bridge``) and
the site user's ACL on the cloud broker (``access.grants``) are both written from
``crossings``, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from splitmq.shared.protocol.topics import ANY, Topics

Direction = Literal["out", "in"]
#: Where mosquitto says whether each bridge is connected ("1") or not ("0"), retained,
#: on the site broker; the bridge is named after its site (``bridge_state``).
BRIDGE_STATES = "$SYS/broker/connection/+/state"
#: The roles at a site whose telemetry goes up (the cloud's own comes down).
SITE_ROLES = ("device", "edge", "planner")


def bridge_state(site: str) -> str:
    """The state topic of the bridge of ``site`` (the site's planner reads it)."""
    return BRIDGE_STATES.replace("+", site)


class Crossing(NamedTuple):
    """One filter a bridge carries: ``local`` on the site broker is ``remote`` on the cloud's."""

    direction: Direction
    local: str
    remote: str


def crossings(topics: Topics, site: str) -> list[Crossing]:
    """Every filter the bridge of ``site`` carries, in the tree of ``topics``' prefix."""
    here = topics.filters()
    there = here.at_site(site)

    def site_tree(direction: Direction, build: Callable[[Topics], str]) -> Crossing:
        return Crossing(direction, build(here), build(there))

    def shared(build: Callable[[Topics], str]) -> Crossing:
        return Crossing("in", build(here), build(here))

    def telemetry(role: str) -> Callable[[Topics], str]:
        return lambda t: t.telemetry(role, ANY)

    return [
        site_tree("out", lambda t: t.request("cloud", ANY, ANY, ANY)),
        *(site_tree("out", telemetry(role)) for role in SITE_ROLES),
        site_tree("out", lambda t: t.ping(ANY)),
        site_tree("in", lambda t: t.result(ANY)),
        site_tree("in", lambda t: t.error(ANY)),
        site_tree("in", lambda t: t.pong(ANY)),
        shared(lambda t: t.model(ANY)),
        shared(lambda t: t.telemetry("cloud", ANY)),
    ]
