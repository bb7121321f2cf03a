"""Answer each request once: QoS 1 redelivery and device retries bring duplicates."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class SeenIds:
    """Keys seen in the last ``ttl_s`` (at most ``size`` of them); ``first_time`` is atomic."""

    def __init__(self, ttl_s: float = 120.0, size: int = 100_000) -> None:
        self.ttl_s, self.size = ttl_s, size
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) > self.size or next(iter(self._seen.values())) < now - self.ttl_s
            ):
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now
            return True
