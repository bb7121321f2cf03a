"""``splitmq broker``: mosquitto in the foreground, restarted when it dies."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from splitmq.broker.launcher import Broker
from splitmq.broker.secure import TLS_PORT
from splitmq.shared.errors import BrokerError

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.2, 1.0, 2.0, 5.0, 10.0)
STAYED_UP_S = 60.0


def default_data_dir() -> Path:
    """Where ``splitmq broker`` keeps its retained messages between runs."""
    return Path.home() / ".cache" / "splitmq" / "broker"


def run_foreground(
    port: int = 1883,
    host: str = "0.0.0.0",
    *,
    config: Path | None = None,
    data_dir: Path | None = None,
    secure: Path | None = None,
    tls_port: int = TLS_PORT,
) -> int:
    """Run mosquitto until Ctrl-C (``splitmq broker``), restarting it when it dies.

    A crash (a non-zero status or a signal) restarts it on the same port and data dir
    after ``RESTART_DELAYS_S`` (longer each time it dies soon after a start, reset once it
    has stayed up); it gives up after as many quick deaths, returning mosquitto's status,
    since a broker that cannot stay up for a minute has a cause to fix, not to retry.
    mosquitto exiting 0 (asked to stop) ends the runner.

    ``secure`` (a ``splitmq secure init`` directory) turns on users and the ACL for every
    listener and adds TLS on ``tls_port`` at every interface; the plain listener then
    binds to loopback only, for local development on the broker's own host.
    """
    broker = Broker(
        port,
        "127.0.0.1" if secure else host,
        config=config,
        data_dir=data_dir or default_data_dir(),
        echo=True,
        secure=secure,
        tls_port=tls_port,
        tls_host=None,
    )
    quick = 0
    with broker:
        tls = f" and TLS on port {broker.tls_port}" if secure else ""
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
