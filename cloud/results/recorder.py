"""The workers' side of the results store: record answers without slowing them.

A worker's ``on_result`` hook runs on an inference thread just before the answer
is published, so ``Recorder.add`` only turns the answer into a row and queues it
(never blocking, never raising); one thread of the recorder's own writes the
queue to the store in batches. A store that fails (locked past its timeout,
server gone, disk full) costs those rows, logged and counted, never an answer; a
full queue drops rows the same way. ``close`` writes what is queued, then closes.
With ``keep_s`` the same thread deletes older answers (the store's retention) at
start and every ``prune_every_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

from splitmq.cloud.results.schema import row
from splitmq.cloud.results.store import ResultsStore
from splitmq.cloud.results.url import StoreUrl
from splitmq.shared.protocol.results import Result

log = logging.getLogger(__name__)

CAPACITY = 4096  # rows queued before new ones are dropped (a store stalled that long)
PRUNE_EVERY_S = 600.0  # how often answers past the retention are deleted
BATCH = 256  # rows per transaction at most


class Recorder:
    """Queues answers for ``store`` and writes them from its own thread."""

    def __init__(
        self,
        store: ResultsStore | StoreUrl | str,
        capacity: int = CAPACITY,
        keep_s: float | None = None,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.store = store if isinstance(store, ResultsStore) else ResultsStore(store)
        self.keep_s, self.prune_every_s = keep_s, prune_every_s
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(capacity)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._write, name="results-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, result: Result) -> None:
        """Queue one answer (a worker's ``on_result``, or one read from ``result/+``):
        never blocks, never raises."""
        try:
            self._queue.put_nowait(row(result))
        except queue.Full:
            dropped = self._count("dropped")
            if dropped == 1 or dropped % 1000 == 0:
                log.warning(
                    "results store %s falls behind: %d answers dropped", self.store.url, dropped
                )
        except Exception:  # a bug here must not fail the request it describes
            self._count("failed")
            log.exception("cannot record the answer to request %s", result.id)

    def counts(self) -> dict[str, int]:
        """Answers ``recorded``, ``failed`` (the store refused them) and ``dropped`` so far."""
        with self._lock:
            return {key: self._counts[key] for key in ("recorded", "failed", "dropped")}

    def close(self) -> None:
        """Write what is queued, stop the writer, close the store."""
        self._queue.put(None)
        self._thread.join()
        self.store.close()

    def _count(self, key: str, n: int = 1) -> int:
        with self._lock:
            self._counts[key] += n
            return self._counts[key]

    @property
    def pruned(self) -> int:
        """Answers deleted as older than ``keep_s`` so far."""
        with self._lock:
            return self._counts["pruned"]

    def _prune(self) -> None:
        assert self.keep_s is not None
        try:
            gone = self.store.forget(time.time() - self.keep_s)
        except Exception as exc:  # the next round tries again
            log.warning("results store %s: cannot delete old answers: %s", self.store.url, exc)
            return
        if gone:
            self._count("pruned", gone)
            log.info("results store %s: %d answers past retention deleted", self.store.url, gone)

    def _write(self) -> None:
        stop, due = False, time.monotonic()
        while not stop:
            if self.keep_s is not None and time.monotonic() >= due:
                self._prune()
                due = time.monotonic() + self.prune_every_s
            try:
                wait = None if self.keep_s is None else max(0.0, due - time.monotonic())
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self.store.add(batch)
            except Exception as exc:  # the store's trouble, never the worker's
                self._count("failed", len(batch))
                log.warning(
                    "results store %s: %d answers not recorded: %s",
                    self.store.url,
                    len(batch),
                    " ".join(str(exc).split()),
                )
            else:
                self._count("recorded", len(batch))
