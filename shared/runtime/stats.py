"""Counters and latency windows that every role reports in its telemetry."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import numpy as np

from splitmq.shared.protocol.ids import Tier
from splitmq.shared.protocol.telemetry import LinkEstimate, ModelRef, ServiceTime, WorkerTelemetry


class LatencyWindow:
    """The last ``size`` samples of one latency, in ms; p50/p95 on demand."""

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._values.append(ms)

    def summary(self) -> dict[str, float] | None:
        return percentiles(list(self._values))


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50 and p95 (ms) and the count of ``values``; None for none: every report's method."""
    if not values:
        return None
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "n": len(values)}


K = TypeVar("K", bound=Hashable)


class Stats(Generic[K]):
    """Thread-safe counters, per-name latency windows (of ``window`` samples), a rate."""

    def __init__(self, window: int = 512) -> None:
        self.window = window
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._latency: dict[K, LatencyWindow] = {}
        self._done: deque[float] = deque(maxlen=2048)
        self._failures: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def fail(self, code: str) -> None:
        """One request ended in a failure with this error code."""
        with self._lock:
            self._failures[code] += 1

    def failures(self) -> dict[str, int]:
        """Requests that ended in a failure, by error code (telemetry's ``errors``)."""
        with self._lock:
            return dict(self._failures)

    def latency(self, key: K, ms: float) -> None:
        with self._lock:
            self._latency.setdefault(key, LatencyWindow(self.window)).add(ms)

    def finished(self) -> None:
        """One request served: feeds requests/s."""
        with self._lock:
            self._done.append(time.monotonic())
            self.counts["served"] += 1

    def rate(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = sum(1 for t in self._done if now - t <= window_s)
        return round(recent / window_s, 3)

    def latencies(self) -> dict[K, dict[str, float]]:
        with self._lock:
            summaries = {k: v.summary() for k, v in self._latency.items()}
        return {k: v for k, v in summaries.items() if v}

    def forget(self, key: K) -> None:
        """Drop a latency window (what it measured no longer applies)."""
        with self._lock:
            self._latency.pop(key, None)

    def by_prefix(self, prefix: str) -> dict[str, int]:
        """Counts named ``<prefix><key>``, by key (``answered_edge`` -> ``edge``)."""
        with self._lock:
            return {
                k.removeprefix(prefix): n for k, n in self.counts.items() if k.startswith(prefix)
            }

    def snapshot_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def worker_telemetry(
    tier: Tier,
    worker_id: str,
    ts: float,
    stats: Stats[tuple[str, int, int, int | None]],
    loaded: list[tuple[str, int]],
    wan: LinkEstimate | None,
    *,
    in_flight: int,
    threads: int,
    queued: int,
    provider: str | None = None,
) -> WorkerTelemetry:
    """A worker's documented telemetry (protocol.telemetry.WorkerTelemetry); ``provider``:
    the execution provider its sessions run on (``SessionCache.provider``), left out when
    it is the CPU (what a missing one means), so planners older than providers read it."""
    counts = stats.snapshot_counts()
    return WorkerTelemetry(
        role=tier,
        id=worker_id,
        ts=ts,
        rps=stats.rate(),
        in_flight=in_flight,
        errors=stats.failures(),
        threads=threads,
        queued=queued,
        models=[ModelRef(model=n, version=v) for n, v in loaded],
        service=[
            ServiceTime.model_validate({"model": m, "version": v, "from": a, "to": b, **summary})
            for (m, v, a, b), summary in stats.latencies().items()
        ],
        served=counts.get("served", 0),
        duplicates=counts.get("duplicates", 0),
        answered=counts.get(f"answered_{tier}", 0),
        forwarded=stats.by_prefix("forwarded_"),
        wan=wan,
        provider=None if provider == "cpu" else provider,
    )
