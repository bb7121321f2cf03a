"""A model split into device / edge / cloud partitions, and proof that the chain is exact."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from splitmq.shared.errors import ModelError
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.pool import ModelVersion


@dataclass(frozen=True)
class Part:
    tier: str  # "device", "edge" or "cloud"
    a: int
    b: int  # cut index where it stops; the last cut means the model outputs
    onnx: bytes


def split(mv: ModelVersion, a: int, b: int | None = None) -> list[Part]:
    """device = input -> a, edge = a -> b (or the outputs), cloud = b -> outputs."""
    last = mv.last_cut
    mv.check_cut(a)
    if b is not None:
        mv.check_cut(b)
    if not 0 < a < last:
        raise ModelError(f"the device cut must be between 1 and {last - 1}, got {a}")
    if b is not None and not a < b < last:
        raise ModelError(f"the cloud cut must be between {a + 1} and {last - 1}, got {b}")
    bounds = [0, a] + ([b] if b is not None else []) + [last]
    tiers = ["device", "edge", "cloud"]
    return [
        Part(tiers[i], lo, hi, mv.segment(lo, None if hi == last else hi))
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]


def run_chain(mv: ModelVersion, parts: list[Part], x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the parts in turn; returns every model output, wherever it was computed."""
    value = x
    outputs: dict[str, np.ndarray] = {}
    for part in parts:
        session = make_session(part.onnx)
        names = [o.name for o in session.get_outputs()]
        results = dict(zip(names, session.run(None, {mv.cuts[part.a].name: value})))
        outputs.update({k: v for k, v in results.items() if k in mv.output_names})
        if part.b != mv.last_cut:
            value = results[mv.cuts[part.b].name]
    return outputs


def max_deviation(mv: ModelVersion, parts: list[Part], x: np.ndarray) -> float:
    """Largest absolute difference between the chained parts and the whole model."""
    full = make_session(mv.model_bytes)
    reference = dict(
        zip([o.name for o in full.get_outputs()], full.run(None, {mv.cuts[0].name: x}))
    )
    chained = run_chain(mv, parts, x)
    missing = set(reference) - set(chained)
    if missing:
        raise ModelError(f"no partition computes output(s) {sorted(missing)}")
    return max(
        float(np.max(np.abs(reference[k].astype(np.float64) - chained[k]))) for k in reference
    )
