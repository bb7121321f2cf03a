"""``splitmq broker``: mosquitto in the foreground, restarted when it dies."""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from pathlib import Path

from splitmq.broker.bridge import Bridge
from splitmq.broker.launcher import Broker
from splitmq.broker.secure import TLS_PORT
from splitmq.shared.errors import BrokerError, UserError

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.2, 1.0, 2.0, 5.0, 10.0)
STAYED_UP_S = 60.0


def default_data_dir() -> Path:
    """Where ``splitmq broker`` keeps its retained messages between runs: as root, a
    system directory the ``mosquitto`` user it drops to can reach (root's home is 0700)."""
    if os.geteuid() == 0:
        return Path("/var/lib/splitmq/broker")
    return Path.home() / ".cache" / "splitmq" / "broker"


def reachable_from_others(host: str) -> bool:
    """Whether a listener on ``host`` can be reached from other hosts (not loopback)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: whatever it resolves to, assume the network


def run_foreground(
    port: int = 1883,
    host: str = "127.0.0.1",
    *,
    config: Path | None = None,
    data_dir: Path | None = None,
    secure: Path | None = None,
    tls_port: int = TLS_PORT,
    insecure: bool = False,
    bridge: Bridge | None = None,
) -> int:
    """Run mosquitto until Ctrl-C (``splitmq broker``), restarting it when it dies.

    A crash (a non-zero status or a signal) restarts it on the same port and data dir
    after ``RESTART_DELAYS_S`` (longer each time it dies soon after a start, reset once it
    has stayed up); it gives up after as many quick deaths, returning mosquitto's status,
    since a broker that cannot stay up for a minute has a cause to fix, not to retry.
    mosquitto exiting 0 (asked to stop) ends the runner.

    ``host`` is where other hosts reach the broker. Without ``secure`` that is the plain
    listener, and anything but loopback needs ``insecure``: anyone who reaches it can
    read every frame and answer in any worker's place. ``secure`` (a ``splitmq secure
    init`` directory) turns on users and ACLs for every listener and serves TLS on
    ``host``:``tls_port``; the plain listener then binds to loopback only, for local
    development on the broker's own host.
    """
    if ":" in host:
        raise UserError(
            f"--host {host}: IPv6 addresses are not supported yet: give an IPv4 address, "
            "0.0.0.0 or a host name"
        )
    if secure is None and reachable_from_others(host):
        if not insecure:
            raise UserError(
                f"--host {host} opens the broker to other hosts without --secure: anyone "
                "who reaches it can read every frame and result and answer in any worker's "
                "place. Run `splitmq secure init DIR` and `splitmq broker --secure DIR` "
                "(docs/security.md), or say --insecure to do it anyway"
            )
        log.warning(
            "INSECURE: the broker on %s:%d has no users, no ACL and no TLS; any host that "
            "reaches it can read and forge all traffic",
            host,
            port,
        )
    broker = Broker(
        port,
        "127.0.0.1" if secure else host,
        config=config,
        data_dir=data_dir or default_data_dir(),
        echo=True,
        secure=secure,
        tls_port=tls_port,
        tls_host=host,
        bridge=bridge,
    )
    quick = 0
    with broker:
        tls = f" and TLS on {broker.tls_host}:{broker.tls_port}" if secure else ""
        if bridge is not None:
            tls += f", site {bridge.site} bridged to {bridge.url.host}:{bridge.url.port}"
        log.info(
            "MQTT broker on %s%s (data in %s); Ctrl-C stops it",
            broker.address,
            tls,
            broker.data_dir,
        )
        try:
            while True:
                started = time.monotonic()
                code = broker.wait() if broker.running else 1  # 1: a failed restart
                if code == 0:
                    return 0
                quick = quick + 1 if time.monotonic() - started < STAYED_UP_S else 1
                if quick > len(RESTART_DELAYS_S):
                    log.error("mosquitto exited with status %d %d times in a row", code, quick)
                    return code
                delay = RESTART_DELAYS_S[quick - 1]
                log.error("mosquitto exited with status %d; restarting in %.1f s", code, delay)
                time.sleep(delay)
                _restart(broker)
        except KeyboardInterrupt:
            log.info("stopping the broker")
            return 0


def _restart(broker: Broker) -> None:
    """Start it again; a failed start (the port taken meanwhile) counts as a quick death."""
    try:
        broker.restart()
    except BrokerError as exc:
        log.error("restarting mosquitto failed: %s", exc)
