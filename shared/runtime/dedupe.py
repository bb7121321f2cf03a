"""Answer each request once, and again whenever it is asked again.

QoS 1 redelivery and device retries bring duplicates. A duplicate of a
request still being served is dropped: its reply is on its way. A duplicate
of one already served gets the very reply it got (a result, an error, or
the forwarded request) again, because the first may have been lost on the
way (a broker restart, a device that was away): an answer lost once is not
lost for good. Requests are keyed by (device, request id, hop), so one
device cannot shadow another's ids. The cache is bounded by age
(``ttl_s``), count and bytes: memory does not grow with requests served.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: A request being served: its reply is not known yet.
RUNNING = "running"


@dataclass(frozen=True)
class Reply:
    """What a worker published for one request, so it can publish it again."""

    topic: str
    payload: bytes
    options: dict[str, Any] = field(default_factory=dict)  # MqttClient.publish keywords
    deadline: float | None = None  # unix time: a forward's expiry is recomputed from it


class Replays:
    """Replies by request key (see module docstring); thread-safe."""

    def __init__(
        self, ttl_s: float = 120.0, size: int = 100_000, max_bytes: int = 64 * 2**20
    ) -> None:
        self.ttl_s, self.size, self.max_bytes = ttl_s, size, max_bytes
        self._items: OrderedDict[tuple[str, str, int], tuple[float, Reply | str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def claim(self, key: tuple[str, str, int]) -> Reply | str | None:
        """None: a first request, now marked running. ``RUNNING``: a duplicate of one
        being served. A ``Reply``: a duplicate of one served; publish it again."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            found = self._items.get(key)
            if found is not None:
                return found[1]
            self._items[key] = (now, RUNNING)
            return None

    def done(self, key: tuple[str, str, int], reply: Reply) -> None:
        with self._lock:
            if key not in self._items:
                return  # expired while it ran
            when, _ = self._items[key]
            self._items[key] = (when, reply)
            self._bytes += len(reply.payload)
            self._expire(time.monotonic())

    def forget(self, key: tuple[str, str, int]) -> None:
        """The request ended without a reply to keep (its serving failed to publish)."""
        with self._lock:
            self._drop(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _expire(self, now: float) -> None:
        while self._items:
            key, (when, _) = next(iter(self._items.items()))
            if (
                when >= now - self.ttl_s
                and len(self._items) <= self.size
                and (self._bytes <= self.max_bytes)
            ):
                return
            self._drop(key)

    def _drop(self, key: tuple[str, str, int]) -> None:
        found = self._items.pop(key, None)
        if found is not None and isinstance(found[1], Reply):
            self._bytes -= len(found[1].payload)
