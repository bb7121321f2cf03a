"""A site's WAN as its planner sees it: the bridge's state and the edges' measurements.

At a site (setting ``site``) the planner runs beside the site broker, so a WAN
outage cannot cut it off from its devices. Two things tell it about the WAN:

- **The bridge's state**, which mosquitto publishes retained on the site broker
  (``$SYS/broker/connection/<site>/state``, ``1`` or ``0``) the moment the bridge
  connects or drops. While it is ``0`` the cloud tier is unreachable: its
  workers' (retained) telemetry is set aside, so every plan through the cloud
  costs infinity and the site's devices move to edge, exit or local plans at the
  next round, which the change itself triggers. When it is ``1`` again they may
  move back (the control's gain and dwell apply as to any improvement).
- **The WAN's link**, which each edge measures with probes the cloud answers
  (``shared.runtime.wan``) and reports in its telemetry (``wan``). The freshest
  estimate is the cloud tier's link, which ``planner.cost`` adds to every
  escalation (its bytes, its RTT); a ``--cloud-link`` given stands until one is
  measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from splitmq.planner.fleet import STALE_LINK_S
from splitmq.shared.protocol.sites import bridge_state
from splitmq.shared.protocol.telemetry import WorkerTelemetry
from splitmq.shared.units import Link

log = logging.getLogger(__name__)

#: Seconds after the start by which a bridged site broker has said its bridge's state.
QUIET_S = 10.0


@dataclass
class Wan:
    """What the planner of ``site`` knows of its WAN (None: not at a site)."""

    site: str | None = None
    up: bool | None = None  # None: no state heard yet (or no bridge): assumed up
    since: float = field(default_factory=time.monotonic)
    quiet_warned: bool = False

    def heard(self, payload: bytes) -> bool:
        """The bridge's state topic said ``payload``; True when that is a change."""
        up = payload.strip() == b"1"
        changed = up != (self.up is not False)
        if changed or self.up is None:
            log.log(
                logging.INFO if up else logging.WARNING,
                "the WAN of site %s is %s",
                self.site,
                "up" if up else "DOWN: no plan through the cloud",
            )
        self.up = up
        return changed

    def reachable(self, workers: Iterable[WorkerTelemetry]) -> list[WorkerTelemetry]:
        """The workers the site can reach now: no cloud worker while the WAN is down.
        Nothing heard of the bridge long after the start (no bridge, another name) is
        said once: the WAN is then taken as up, so its outages go unnoticed."""
        quiet = time.monotonic() - self.since > QUIET_S
        if self.site is not None and self.up is None and quiet and not self.quiet_warned:
            self.quiet_warned = True
            log.warning(
                "no state of site %s's bridge on %s after %g s: is this broker bridged "
                "(`splitmq broker --site %s`)? Planning as if its WAN were up",
                self.site,
                bridge_state(self.site),
                QUIET_S,
                self.site,
            )
        return [w for w in workers if self.up is not False or w.role != "cloud"]

    def links(self, workers: Iterable[WorkerTelemetry], given: dict[str, Link]) -> dict[str, Link]:
        """The tiers' links: ``given``, the cloud's replaced by the freshest measured WAN."""
        measured = [
            w.wan
            for w in workers
            if w.role == "edge"
            and w.wan is not None
            and w.wan.uplink_bps
            and w.wan.age_s is not None
            and w.wan.age_s <= STALE_LINK_S
        ]
        if not measured:
            return given
        best = min(measured, key=lambda est: est.age_s or 0.0)
        assert best.uplink_bps is not None
        return {**given, "cloud": Link(best.uplink_bps, best.rtt_ms or 0.0)}
