"""A device's answers as flat rows: what ``splitmq device`` prints, one per frame.

A row is ``{"frame", "id", "tier", "exit", "top1", "score", "e2e_ms", "bytes",
"attempts"}`` for an answer, or ``{"frame", "error"}`` for a request that
failed visibly (a worker's error, or no answer after the retry).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

from splitmq.shared.errors import SplitMQError

if TYPE_CHECKING:
    import numpy as np

    from splitmq.device.answers import Answer
    from splitmq.device.runtime import Device


def answer_row(frame: int, answer: Answer) -> dict:
    """The row of one answered frame."""
    best = answer.top[0]
    return {
        "frame": frame,
        "id": answer.id,
        "tier": answer.tier,
        "exit": answer.exit,
        "top1": best.label or best.index,
        "score": best.score,
        "e2e_ms": answer.e2e_ms,
        "bytes": answer.bytes_sent,
        "attempts": answer.attempts,
    }


def answer_rows(futures: Iterable[Future]) -> Iterator[dict]:
    """One row per future, in order, each as soon as its answer (or failure) is in."""
    for frame, future in enumerate(futures):
        try:
            answer = future.result()
        except SplitMQError as exc:
            yield {"frame": frame, "error": str(exc)}
        else:
            yield answer_row(frame, answer)


def stream(device: Device, frames: Iterable[np.ndarray]) -> Iterator[dict]:
    """Submit every frame (pipelined, ``window`` in flight), then yield the rows in order."""
    futures = [device.submit(frame) for frame in frames]
    return answer_rows(futures)
