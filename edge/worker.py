"""The edge worker: continues devices' requests, answers early, escalates the rest, and
takes plain cameras' frames besides.

The mechanics are :class:`splitmq.shared.runtime.worker.Worker`, which the cloud tier
runs as it is (``Worker(settings, "cloud", ...)``); what the edge adds is its frame
ingress (``edge.frames``).
"""

from __future__ import annotations

from typing import Any

from splitmq.edge.frames import Frames
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings


def edge_worker(settings: Settings, worker_id: str | None = None, **options: Any) -> Worker:
    """A worker of the edge tier; ``options`` are the Worker's (threads, on_result, ...)."""
    return Worker(settings, "edge", worker_id, ingress=[Frames(settings)], **options)
