"""What the broker answered to each QoS 1 publish (its PUBACK), by packet id.

Split from ``mqtt``: the client publishes, this remembers who listens for
which PUBACK and which ones refused. A PUBACK may arrive before ``publish``
registers its listener, so unclaimed acks are kept (a bounded number). paho
reports a PUBACK holding its own mutex, which ``publish`` needs too: the lock
here is never held while calling paho, and the subscriptions' lock (held while
subscribing through paho) is never taken on this path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from paho.mqtt.reasoncodes import ReasonCode

#: Hears a PUBACK: its reason code and reason.
AckListener = Callable[[int, str], None]
#: PUBACKs kept that nobody has asked about yet.
MAX_UNCLAIMED = 1024


class PubAcks:
    """Listeners for PUBACKs, acks that came before their listener, and refusals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[int, AckListener] = {}
        self._early: dict[int, tuple[int, str]] = {}
        self._failures: dict[int, ReasonCode] = {}

    def listen(self, mid: int, on_ack: AckListener) -> None:
        """``on_ack`` hears the PUBACK of message ``mid``: now, if it came already."""
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._listeners[mid] = on_ack
        if early is not None:
            on_ack(*early)

    def heard(self, mid: int, reason: ReasonCode) -> None:
        """The broker's PUBACK of ``mid`` (on paho's network thread)."""
        if reason.is_failure:
            self._failures[mid] = reason
        else:
            self._failures.pop(mid, None)
        with self._lock:
            listener = self._listeners.pop(mid, None)
            if listener is None:
                self._early[mid] = (reason.value, str(reason))
                while len(self._early) > MAX_UNCLAIMED:
                    self._early.pop(next(iter(self._early)))
        if listener is not None:
            listener(reason.value, str(reason))

    def refusal(self, mid: int) -> ReasonCode | None:
        """Why the broker refused ``mid``, once (None: it did not)."""
        return self._failures.pop(mid, None)
