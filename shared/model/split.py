"""A model split into device / edge / cloud partitions, and proof that the chain is exact.

"Exact" is this module's rule, not each caller's: the CLI and the tests ask
:func:`check_exact` (or compare with :data:`EXACT_ATOL`) instead of a literal.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from splitmq.shared.errors import ModelError
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.pool import ModelVersion

# Largest |chained - whole| accepted as "the same model". Partitions run the same
# kernels on the same values; only ONNX Runtime fusing ops differently across a
# cut moves float32 results, at rounding level. A wiring mistake is far larger.
EXACT_ATOL = 1e-4


@dataclass(frozen=True)
class SplitCheck:
    """The verdict of :func:`check_exact`."""

    max_abs_deviation: float
    ok: bool  # max_abs_deviation <= EXACT_ATOL (False for NaN)


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
    """Largest absolute difference between the chained parts and the whole model.

    NaN anywhere gives NaN and a shape mismatch gives inf, so neither passes as exact.
    """
    full = make_session(mv.model_bytes)
    names = [o.name for o in full.get_outputs() if o.name in mv.output_names]
    reference = dict(zip(names, full.run(names, {mv.cuts[0].name: x})))
    chained = run_chain(mv, parts, x)
    missing = set(reference) - set(chained)
    if missing:
        raise ModelError(f"no partition computes output(s) {sorted(missing)}")
    return float(np.max([_deviation(reference[k], chained[k]) for k in reference]))  # NaN wins


def _deviation(reference: np.ndarray, chained: np.ndarray) -> float:
    if reference.shape != chained.shape:
        return float("inf")
    diff = np.abs(reference.astype(np.float64) - chained.astype(np.float64))
    return float(np.max(diff)) if diff.size else 0.0


def check_exact(mv: ModelVersion, parts: list[Part], x: np.ndarray | None = None) -> SplitCheck:
    """Whether the chained parts reproduce the whole model on ``x`` (default: a sample)."""
    deviation = max_deviation(mv, parts, mv.graph.sample_input() if x is None else x)
    return SplitCheck(deviation, bool(deviation <= EXACT_ATOL))
