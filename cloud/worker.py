"""The cloud worker: runs the final segments, answering what the edge escalated.

The mechanics are :class:`splitmq.shared.runtime.worker.Worker`, shared with the edge;
``on_result`` records each answer (a results store's ``Recorder.add``).
"""

from __future__ import annotations

from collections.abc import Callable

from splitmq.shared.protocol.results import Result
from splitmq.shared.protocol.wire import Request
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings


def cloud_worker(
    settings: Settings,
    worker_id: str | None = None,
    threads: int = 2,
    queue_size: int = 8,
    speed: float = 1.0,
    on_result: Callable[[Result, Request], None] | None = None,
) -> Worker:
    return Worker(
        settings,
        "cloud",
        worker_id,
        threads=threads,
        queue_size=queue_size,
        on_result=on_result,
        speed=speed,
    )
