"""ONNX Runtime sessions for pool partitions, created once and shared by threads.

``InferenceSession.run`` is thread-safe and releases the GIL, so one session
per (model, version, a, b) serves every worker thread. The first session of
a partition is warmed up with a sample so the first request is not the slow one.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from splitmq.shared.model.graph import fixed_batch, make_session, run_batched
from splitmq.shared.model.pool import ModelPool, ModelVersion


class Segment:
    """One partition ready to run: cut ``a`` to cut ``b`` (the last cut: the outputs)."""

    def __init__(self, mv: ModelVersion, a: int, b: int, threads: int) -> None:
        self.mv, self.a, self.b = mv, a, b
        self.session: ort.InferenceSession = make_session(
            mv.segment(a, None if b == mv.last_cut else b), threads
        )
        self.input = mv.cuts[a]
        self.outputs = [o.name for o in self.session.get_outputs()]
        dims = self.session.get_inputs()[0].shape
        self.batch = fixed_batch(dims[0] if dims else None)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for ``x``; a model whose batch is fixed to N > 1 runs a sample padded
        to N (its partitions take exactly N), and the sample's rows come back."""
        values = run_batched(self.session, None, self.input.name, x, self.batch)
        return dict(zip(self.outputs, values))

    def warm_up(self) -> None:
        self.run(np.zeros(self.input.shape, dtype=self.input.dtype))


class SessionCache:
    """Model versions and segments loaded lazily from the pool, keyed and locked."""

    def __init__(self, pool: ModelPool, threads: int = 1) -> None:
        self.pool = pool
        self.threads = threads
        self._lock = threading.Lock()
        self._models: dict[tuple[str, int | None], ModelVersion] = {}
        self._segments: dict[tuple[str, int, int, int], Segment] = {}

    def model(self, name: str, version: int | None = None) -> ModelVersion:
        key = (name, version)
        with self._lock:
            if key not in self._models:
                mv = self.pool.get(name, version)
                mv.model_bytes  # noqa: B018  (verify the file once, before any use)
                self._models[key] = mv
            return self._models[key]

    def forget(self, name: str) -> None:
        """Read ``name``'s manifests (and its newest version) from the pool again on next
        use: a version was added or calibrated. Segments stay: a version's bytes never
        change, so requests that still name an old version keep being served."""
        with self._lock:
            self._models = {k: mv for k, mv in self._models.items() if k[0] != name}

    def segment(self, mv: ModelVersion, a: int, b: int) -> Segment:
        key = (mv.name, mv.version, a, b)
        with self._lock:
            seg = self._segments.get(key)
        if seg is None:
            seg = Segment(mv, a, b, self.threads)  # slow part outside the lock
            seg.warm_up()
            with self._lock:
                seg = self._segments.setdefault(key, seg)
        return seg

    def loaded(self) -> list[tuple[str, int]]:
        """(model, version) of every model with a running segment."""
        with self._lock:
            return sorted({(n, v) for n, v, _, _ in self._segments})
