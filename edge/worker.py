"""The edge worker: continues requests from devices, answers early, escalates the rest.

All the mechanics live in :class:`splitmq.shared.worker.Worker`, shared with
the cloud tier; the edge is the tier whose hops may end at an early-exit head.
"""

from __future__ import annotations

from splitmq.shared.settings import Settings
from splitmq.shared.worker import Worker


def edge_worker(
    settings: Settings, worker_id: str | None = None, threads: int = 2, queue_size: int = 8
) -> Worker:
    return Worker(settings, "edge", worker_id, threads=threads, queue_size=queue_size)
