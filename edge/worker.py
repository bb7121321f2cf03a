"""The edge worker: continues requests from devices, answers early, escalates the rest.

All the mechanics live in :class:`splitmq.shared.runtime.worker.Worker`, shared with
the cloud tier; the edge is the tier whose hops may end at an early-exit head, so it
records its answers too when given ``on_result`` (a results store's ``Recorder.add``).
"""

from __future__ import annotations

from collections.abc import Callable

from splitmq.shared.protocol.results import Result
from splitmq.shared.protocol.wire import Request
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings


def edge_worker(
    settings: Settings,
    worker_id: str | None = None,
    threads: int = 2,
    queue_size: int = 8,
    speed: float = 1.0,
    on_result: Callable[[Result, Request], None] | None = None,
) -> Worker:
    return Worker(
        settings,
        "edge",
        worker_id,
        threads=threads,
        queue_size=queue_size,
        on_result=on_result,
        speed=speed,
    )
