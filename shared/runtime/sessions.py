"""ONNX Runtime sessions for pool partitions, created once and shared by threads.

``InferenceSession.run`` is thread-safe and releases the GIL, so one session
per (model, version, a, b) serves every worker thread. The first session of
a partition is warmed up with a sample so the first request is not the slow one.
Every session runs on the execution providers the settings name (``providers``),
resolved and tried on a one-node model when the cache is made: a missing provider,
or one that does not start, fails a role at start, not at its first request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from splitmq.shared.model.graph import fixed_batch, make_session, run_batched
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.providers import CPU, resolve, short_name


class Segment:
    """One partition ready to run: cut ``a`` to cut ``b`` (the last cut: the outputs)."""

    def __init__(
        self, mv: ModelVersion, a: int, b: int, threads: int, providers: Sequence[str] = CPU
    ) -> None:
        self.mv, self.a, self.b = mv, a, b
        self.session: ort.InferenceSession = make_session(
            mv.segment(a, None if b == mv.last_cut else b), threads, providers
        )
        self.provider = short_name(self.session.get_providers()[0])  # what it runs on
        self.input = mv.cuts[a]
        self.outputs = [o.name for o in self.session.get_outputs()]
        dims = self.session.get_inputs()[0].shape
        self.batch = fixed_batch(dims[0] if dims else None)
        # rows of several requests in one run: only where every output's first dim is
        # the input's symbolic batch (a first dim that merely equals N is not a batch)
        firsts = [o.shape[0] if o.shape else None for o in self.session.get_outputs()]
        self.batches = bool(dims) and isinstance(dims[0], str) and all(d == dims[0] for d in firsts)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for ``x``; a model whose batch is fixed to N > 1 runs a sample padded
        to N (its partitions take exactly N), and the sample's rows come back."""
        values = run_batched(self.session, None, self.input.name, x, self.batch)
        return dict(zip(self.outputs, values))

    def warm_up(self) -> None:
        self.run(np.zeros(self.input.shape, dtype=self.input.dtype))


class SessionCache:
    """Model versions and segments loaded lazily from the pool, keyed and locked;
    ``providers``: the setting (``"cuda,cpu"``), resolved here (a UserError if unusable)."""

    def __init__(self, pool: ModelPool, threads: int = 1, providers: str = "cpu") -> None:
        self.pool = pool
        self.threads = threads
        self.providers = resolve(providers)  # ONNX Runtime's names
        self._provider = _tried(self.providers)
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
            seg = Segment(mv, a, b, self.threads, self.providers)  # slow part outside the lock
            seg.warm_up()
            with self._lock:
                seg = self._segments.setdefault(key, seg)
                self._provider = seg.provider  # a session's own fallback is logged; and shown
        return seg

    @property
    def provider(self) -> str:
        """The provider its sessions run on (``cpu``, ``cuda``): the first resolved one,
        or the one ONNX Runtime fell back to in the newest segment (logged)."""
        with self._lock:
            return self._provider

    def loaded(self) -> list[tuple[str, int]]:
        """(model, version) of every model with a running segment."""
        with self._lock:
            return sorted({(n, v) for n, v, _, _ in self._segments})


def _tried(providers: Sequence[str]) -> str:
    """The provider a session on ``providers`` runs on, from a one-node model's session
    (``make_session`` logs a fallback, or refuses one to a provider not listed)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    session = make_session(helper.make_model(graph), 1, providers)
    return short_name(session.get_providers()[0])
