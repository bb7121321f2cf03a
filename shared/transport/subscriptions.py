"""The MQTT client's subscriptions: which handler gets a message, and what to restore.

Split from ``mqtt`` so the client keeps the connection and publishing. Every
filter is remembered with its MQTT v5 subscription identifier, which routes a
message to its handler, and sent again after each reconnect (the broker does
not restore shared subscriptions). One lock guards the table and is held while
a SUBSCRIBE goes out, never while waiting for its SUBACK.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from splitmq.shared.errors import BrokerError
from splitmq.shared.transport.messages import Handler


@dataclass(frozen=True, slots=True)
class Subscription:
    topic_filter: str
    handler: Handler
    qos: int
    sub_id: int  # MQTT v5 subscription identifier: routes a message to its handler
    no_local: bool = False  # MQTT v5: not this client's own publications


@dataclass(slots=True)
class PendingSubscribe:
    done: threading.Event = field(default_factory=threading.Event)
    codes: list[ReasonCode] = field(default_factory=list)


#: A SUBSCRIBE sent: the subscription, its packet id and what its SUBACK fills in.
Sent = tuple[Subscription, int, PendingSubscribe]


def matches(topic_filter: str, topic: str) -> bool:
    """Filter match, ignoring a ``$share/<group>/`` head (fallback without sub ids)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return paho.topic_matches_sub(topic_filter, topic)


class Subscriptions:
    """The filters of one client, each with its handler, subscribed through ``client``."""

    def __init__(self, client: paho.Client, connected: Callable[[], bool]) -> None:
        self._client = client
        self._connected = connected
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._by_id: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, PendingSubscribe] = {}

    def add(
        self, topic_filter: str, handler: Handler, qos: int, wait: bool, no_local: bool = False
    ) -> Sent | None:
        """Remember the filter (replacing its handler) and send it if connected.

        Returns what to pass to :meth:`await_suback`, or None when there is nothing to
        wait for: not connected (the reconnect sends it), or ``wait`` is False.
        """
        with self._lock:
            old = self._subs.get(topic_filter)
            sub_id = old.sub_id if old else next(self._ids)
            sub = Subscription(topic_filter, handler, qos, sub_id, no_local)
            self._subs[topic_filter] = self._by_id[sub_id] = sub
            if not self._connected():
                return None
            rc, mid = self._send(sub)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None or not wait:
                return None  # if the connection was lost meanwhile, the reconnect sends it
            pending = self._pending[mid] = PendingSubscribe()
        return sub, mid, pending

    def _send(self, sub: Subscription) -> tuple[MQTTErrorCode, int | None]:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = sub.sub_id
        options = paho.SubscribeOptions(qos=sub.qos, noLocal=sub.no_local)
        return self._client.subscribe(sub.topic_filter, options=options, properties=props)

    def await_suback(self, sent: Sent, timeout: float) -> None:
        """Wait for the broker's SUBACK; BrokerError (and the filter forgotten) if refused."""
        sub, mid, pending = sent
        try:
            if not pending.done.wait(timeout):
                raise BrokerError(f"no SUBACK for {sub.topic_filter!r} within {timeout:g} s")
        finally:
            with self._lock:
                self._pending.pop(mid, None)
        failures = [str(code) for code in pending.codes if code.is_failure]
        if failures:
            with self._lock:
                if self._subs.get(sub.topic_filter) is sub:
                    del self._subs[sub.topic_filter], self._by_id[sub.sub_id]
            raise BrokerError(
                f"the broker refused subscription {sub.topic_filter!r}: {failures[0]}"
            )

    def remove(self, topic_filter: str) -> bool:
        """Forget the filter; whether it was there."""
        with self._lock:
            sub = self._subs.pop(topic_filter, None)
            if sub is not None:
                del self._by_id[sub.sub_id]
        return sub is not None

    def resend(self) -> None:
        """Send every filter again (on each connect)."""
        with self._lock:
            for sub in self._subs.values():
                self._send(sub)

    def subacked(self, mid: int, codes: list[ReasonCode]) -> bool:
        """Hand a SUBACK to its waiter; False when nobody waits (a resubscription)."""
        with self._lock:
            pending = self._pending.get(mid)
        if pending is None:
            return False
        pending.codes = codes
        pending.done.set()
        return True

    def release_waiters(self) -> None:
        """Let every waiter return (the connection is lost; the reconnect resends)."""
        with self._lock:
            for pending in self._pending.values():
                pending.done.set()

    def route(self, topic: str, sub_ids: list[int] | None) -> list[Subscription]:
        """The subscriptions a message on ``topic`` goes to: by identifier, else by filter."""
        with self._lock:
            subs = [self._by_id[i] for i in sub_ids or () if i in self._by_id]
            if subs:
                return subs
            return [s for s in self._subs.values() if matches(s.topic_filter, topic)]
