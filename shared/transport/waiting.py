"""Waiting for the broker at start: retry with capped, jittered backoff, a log line each.

Compose, systemd and a reboot start the broker and the roles in any order; a
role that gave up at once would only be as good as its supervisor's restart
policy. So a role waits: forever by default, or up to the ``connect_timeout``
setting, then fails with an error that names the broker and the last reason.
Only a broker that cannot be reached is waited for: a refused login, a
certificate that does not verify or a malformed address fails at once, since
no retry mends them. The jitter keeps a fleet of devices that lost the same
broker from knocking again all in step.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from splitmq.shared.errors import BrokerError, LoginRefused

log = logging.getLogger("splitmq.shared.transport.mqtt")

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: ``first_s``, doubling up to ``cap_s``, each ± ``jitter``."""

    first_s: float = 0.5
    cap_s: float = 10.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.cap_s and 0 <= self.jitter < 1):
            raise ValueError(f"bad backoff {self}: need 0 < first <= cap and 0 <= jitter < 1")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        base = self.first_s
        while True:
            yield min(self.cap_s, base * rng.uniform(1 - self.jitter, 1 + self.jitter))
            base = min(self.cap_s, base * 2)


def unreachable_reason(exc: BrokerError) -> str | None:
    """Why the broker could not be reached, when waiting may mend it; None when not."""
    if isinstance(exc, LoginRefused):
        return None
    cause = exc.__cause__
    if cause is None:  # connected, but no CONNACK in time: the broker is still starting
        return str(exc)
    if isinstance(cause, ssl.SSLCertVerificationError) or not isinstance(cause, OSError):
        return None
    return cause.strerror or str(cause) or type(cause).__name__


def waiting(
    attempt: Callable[[], T],
    where: object,
    timeout_s: float | None,
    backoff: Backoff = Backoff(),
) -> T:
    """``attempt()`` until it connects; a ``BrokerError`` after ``timeout_s`` (None: never).

    ``timeout_s`` 0 makes one attempt and raises its own error.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for delay in backoff.delays():
        try:
            return attempt()
        except BrokerError as exc:
            reason = unreachable_reason(exc)
            if reason is None or timeout_s == 0:
                raise
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(
                    f"broker {where} not reachable within {timeout_s:g} s ({reason}): is it "
                    "running, and is the broker setting (--broker, SPLITMQ_BROKER) right?"
                ) from exc
        pause = min(delay, left)
        log.warning("broker %s not reachable (%s); retrying in %.1f s", where, reason, pause)
        time.sleep(pause)  # Ctrl-C and SIGTERM (KeyboardInterrupt in the CLI) end it
    raise AssertionError("unreachable: delays() never ends")
