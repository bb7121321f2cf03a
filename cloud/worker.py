"""The cloud worker: runs the final segments and keeps a store of its answers.

The mechanics are :class:`splitmq.shared.runtime.worker.Worker`, shared with the edge.
"""

from __future__ import annotations

from pathlib import Path

from splitmq.cloud.results import ResultsStore
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings


def cloud_worker(
    settings: Settings,
    worker_id: str | None = None,
    threads: int = 2,
    queue_size: int = 8,
    results: Path | None = None,
    speed: float = 1.0,
) -> Worker:
    store = ResultsStore(results) if results else None
    worker = Worker(
        settings,
        "cloud",
        worker_id,
        threads=threads,
        queue_size=queue_size,
        on_result=store.add if store else None,
        speed=speed,
    )
    if store:
        worker.on_stop.append(store.close)
    return worker
