"""The edge worker: continues requests from devices, answers early, escalates the rest.

All the mechanics live in :class:`splitmq.shared.runtime.worker.Worker`, shared with
the cloud tier; the edge is the tier whose hops may end at an early-exit head.
"""

from __future__ import annotations

from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings


def edge_worker(
    settings: Settings,
    worker_id: str | None = None,
    threads: int = 2,
    queue_size: int = 8,
    speed: float = 1.0,
) -> Worker:
    return Worker(settings, "edge", worker_id, threads=threads, queue_size=queue_size, speed=speed)
