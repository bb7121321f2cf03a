"""A device's answers as flat rows: what ``splitmq device`` prints, one per frame.

A row is ``{"frame", "id", "tier", "exit", "top1", "index", "score", "e2e_ms",
"bytes", "cloud_bytes", "attempts"}`` for an answer (a detector's: its best box, and
``boxes``, how many; ``bytes`` the device sent,
``cloud_bytes`` what reached the cloud: 0 unless it escalated), or ``{"frame",
"error"}`` for a request that failed visibly (a worker's error, or no answer
after the retry). A run's rows add up to its summary (``lab.summary``).
"""

from __future__ import annotations

import queue
import threading
import time
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
    return {
        "frame": frame,
        "id": answer.id,
        "tier": answer.tier,
        "exit": answer.exit,
        "top1": answer.label or answer.top1,
        "index": answer.top1,
        "score": answer.score,
        **({"boxes": len(answer.boxes)} if answer.boxes or not answer.top else {}),
        "e2e_ms": answer.e2e_ms,
        "bytes": answer.bytes_sent,
        "cloud_bytes": sum(h.bytes or 0 for h in answer.latency if h.tier == "cloud"),
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


class Stream:
    """Submit frames (pipelined, ``window`` in flight; ``fps`` of them a second, or as
    fast as answers come) from a thread of their own; iterate for each frame's row, in
    order, as soon as it is in. ``stop()`` ends the submitting; the rows of the requests
    already sent still come, so a stopped device loses nothing it sent.
    """

    def __init__(
        self, device: Device, frames: Iterable[np.ndarray], fps: float | None = None
    ) -> None:
        self.submitted = 0
        self._stop = threading.Event()
        self._queue: queue.Queue[Future | None] = queue.Queue(maxsize=64)
        self._device, self._frames, self._fps = device, frames, fps
        threading.Thread(target=self._produce, name=f"{device.id}-frames", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[dict]:
        return answer_rows(iter(self._queue.get, None))

    def _produce(self) -> None:
        start, fps, submitted = time.monotonic(), self._fps, self._queue
        try:
            for i, frame in enumerate(self._frames):
                delay = start + i / fps - time.monotonic() if fps else 0.0
                if self._stop.wait(delay) if delay > 0 else self._stop.is_set():
                    break
                future = self._device.submit(frame)
                self.submitted += 1
                submitted.put(future)
        except BaseException as exc:  # the consumer raises it, after the rows so far
            failed: Future = Future()
            failed.set_exception(exc)
            submitted.put(failed)
        finally:
            submitted.put(None)
