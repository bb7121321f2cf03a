"""Connections the broker ends right after they began: another client with the same id.

MQTT lets one connection per client id: a second one takes the session over and the
broker closes the first (mosquitto 2.0.11 without a reason code). Two processes with
one id (two devices started with one id, or one device's credentials used twice)
then reconnect and close each other several times a second, each close publishing
the other's Last Will. So after ``AFTER`` connections in a row that lasted under
``SHORT_S``, the client says what is likely wrong, once per streak, and waits longer
before each reconnect (up to ``MAX_DELAY_S``), until a connection lasts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

SHORT_S = 1.0
AFTER = 5
MAX_DELAY_S = 10.0


class Flapping:
    """Counts short-lived connections of one client and sets its reconnect delay."""

    def __init__(
        self,
        client_id: str,
        base: tuple[float, float],
        set_delay: Callable[[Any, Any], object],
    ) -> None:
        self.client_id, self.base, self.set_delay = client_id, base, set_delay
        self.short = 0

    def lost(self, lived_s: float, reason: object) -> tuple[int, str]:
        """The level and line to log for a lost connection that lasted ``lived_s``."""
        if lived_s >= SHORT_S:
            if self.short >= AFTER:
                self.set_delay(*self.base)
            self.short = 0
        else:
            self.short += 1
        if self.short < AFTER:
            return logging.WARNING, (
                f"{self.client_id} lost the broker ({reason}); reconnecting with backoff"
            )
        delay = min(MAX_DELAY_S, self.base[1] * 2 ** (self.short - AFTER + 1))
        self.set_delay(delay, delay)
        level = logging.ERROR if self.short == AFTER else logging.WARNING
        return level, (
            f"{self.client_id}: the broker ended its last {self.short} connections within "
            f"{SHORT_S:g} s each: another client is likely connected with client id "
            f"{self.client_id!r} (a second process with this id, or these credentials used "
            f"twice); reconnecting in {delay:g} s"
        )
