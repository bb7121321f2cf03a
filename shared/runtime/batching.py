"""How a worker thread takes its next requests: one at a time, or a dynamic batch.

Triton's dynamic batcher, on a worker's own queue: a thread takes the first
request waiting, then what else is queued, up to ``max_batch``, waiting at
most ``max_delay_s`` for more while the batch is short. The executor then runs
a batch's requests for one segment as one ONNX Runtime call
(``HopExecutor.execute``). Batching pays where one call of N rows costs much
less than N calls: on accelerators. On a CPU it barely does (measured in
docs/benchmarks.md, "Dynamic batching"), so there a worker batches only when
told to (``--max-batch``).
"""

from __future__ import annotations

import queue
import time
from typing import Generic, TypeVar

#: Requests per batch on an accelerator when ``--max-batch`` is not given.
ACCELERATOR_BATCH = 8
#: Providers that run on a GPU or NPU, where one call of N costs little more than one
#: of 1; the rest (cpu, openvino, dnnl, xnnpack, ...) run on CPU cores.
ACCELERATORS = frozenset({"cuda", "tensorrt", "rocm", "migraphx", "dml"})

T = TypeVar("T")


def default_max_batch(provider: str) -> int:
    """A worker's batch when none is set: 1 (no batching) but on an accelerator."""
    return ACCELERATOR_BATCH if provider in ACCELERATORS else 1


class Batches(Generic[T]):
    """Takes batches off a worker's queue; ``None`` in the queue stops one taker."""

    def __init__(self, items: queue.Queue[T | None], max_batch: int, max_delay_s: float) -> None:
        self.items, self.max_batch, self.max_delay_s = items, max_batch, max_delay_s

    def take(self) -> tuple[list[T], bool]:
        """The next batch (at least one item, unless stopping) and whether to stop after it."""
        first = self.items.get()
        if first is None:
            return [], True
        batch, until = [first], time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch:
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self.items.get(timeout=left)
                except queue.Empty:
                    break
            if item is None:  # this thread's stop: serve what it holds, then stop
                return batch, True
            batch.append(item)
        return batch, False
