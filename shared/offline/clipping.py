"""Choosing the clip range of the uniform N-bit codecs from the values seen at a cut.

A range is either *static* (calibrated once, sent with every message) or the
message's own min/max (what the codec does when given no range). Static wins
where outliers would stretch a message's range (per-tensor codecs, 2 bits,
large maps); a message's own range wins where it adapts better than any fixed
one (per-channel codecs on small maps, and exactly when a channel holds one
value). ``clip="auto"`` measures both on the calibration data and keeps the
one that reconstructs better; see docs/benchmarks.md for what each choice
does to top-1 agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitmq.shared.errors import UserError
from splitmq.shared.model.calibration import CALIBRATED, ClipRange

#: Codec -> (bits, per channel): the codecs whose clip range is calibrated.
#: auto: the better of mse and none; mse: the static range with the least squared error;
#: minmax, p99.9, p99.99: static ranges at fixed quantiles; none: each message's own min/max.
CLIPS = ("auto", "mse", "minmax", "p99.9", "p99.99", "none")
#: Fractions cut off each tail that the "mse" search tries (0: the min/max).
_TAILS = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.06, 0.1)
_PERCENTILE_TAILS = {"minmax": 0.0, "p99.9": 1e-3, "p99.99": 1e-4}
#: Values the range search looks at, at most (the error comparison uses all of them).
_SEARCH_VALUES = 1 << 20


def check_clip(clip: str) -> str:
    if clip not in CLIPS:
        raise UserError(f"unknown clip method {clip!r}; known: {', '.join(CLIPS)}")
    return clip


@dataclass(frozen=True)
class CutValues:
    """What calibration saw at one cut."""

    values: np.ndarray  # (N, C, S): every sample, the same positions subsampled in each
    mins: np.ndarray  # (N, C): each message's own extremes, over all positions
    maxs: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> CutValues:
        """From complete (N, C, S) values."""
        return cls(values, values.min(axis=2), values.max(axis=2))

    @classmethod
    def join(cls, parts: list[CutValues]) -> CutValues:
        """The values of several batches as one."""
        return cls(
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.mins for p in parts]),
            np.concatenate([p.maxs for p in parts]),
        )


def _squared_error(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Elementwise squared error of ``levels``-step codes over [lo, hi] (broadcast to v).

    A flat range reconstructs everything as lo, as the codec does.
    """
    step = np.maximum((hi - lo) / levels, 1e-30)
    codes = np.clip(np.floor((v - lo) / step + 0.5), 0, levels)
    return (codes * step + lo - v) ** 2


def _rows(values: np.ndarray, per_channel: bool) -> np.ndarray:
    """(N, C, S) as float64 rows, one per channel (C, N·S) or a single one (1, N·C·S)."""
    if per_channel:
        return values.transpose(1, 0, 2).reshape(values.shape[1], -1).astype(np.float64)
    return values.reshape(1, -1).astype(np.float64)


def _candidates(rows: np.ndarray, clip: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if clip in _PERCENTILE_TAILS:
        tail = _PERCENTILE_TAILS[clip]
        low, high = np.quantile(rows, [tail, 1 - tail], axis=1)
        return [(low, high)]
    quantiles = np.quantile(rows, [*_TAILS, *(1 - t for t in _TAILS)], axis=1)
    lows, highs = quantiles[: len(_TAILS)], quantiles[len(_TAILS) :]
    # Both tails clipped, or only the top one: a floor such as ReLU's 0 stays exact.
    return [(lows[i], highs[i]) for i in range(len(_TAILS))] + [
        (lows[0], highs[i]) for i in range(1, len(_TAILS))
    ]


def static_range(
    values: np.ndarray, bits: int, per_channel: bool, clip: str = "mse"
) -> tuple[np.ndarray, np.ndarray]:
    """Static clip range (lo, hi) for ``bits``-bit codes of ``values`` (N, C, S).

    float32 of shape (C,) per channel, () per tensor. ``clip`` is ``mse`` (the
    candidate range with the least squared error) or a fixed quantile rule. A
    constant row gets [c, c + max(|c|, 1)]: c stays exact at code 0, as the
    codec itself does for a constant tensor.
    """
    rows = _rows(values, per_channel)
    rows = rows[:, :: -(-rows.size // _SEARCH_VALUES)]
    levels = (1 << bits) - 1
    candidates = _candidates(rows, clip)
    errors = [
        _squared_error(rows, lo[:, None], hi[:, None], levels).mean(axis=1) for lo, hi in candidates
    ]
    best = np.argmin(errors, axis=0)
    lo = np.choose(best, [c[0] for c in candidates])
    hi = np.choose(best, [c[1] for c in candidates])
    flat = ~(hi - lo > 1e-6 * np.maximum(np.abs(lo), 1))
    hi = np.where(flat, lo + np.maximum(np.abs(lo), 1), hi)
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    return (lo32, hi32) if per_channel else (lo32[0], hi32[0])


def static_error(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> float:
    """Mean squared error of ``values`` (N, C, S) coded over a static range."""
    shape = (1, -1, 1) if np.ndim(lo) else ()
    lo64, hi64 = (np.reshape(b, shape).astype(np.float64) for b in (lo, hi))
    return float(_squared_error(values.astype(np.float64), lo64, hi64, (1 << bits) - 1).mean())


def message_error(seen: CutValues, bits: int, per_channel: bool) -> float:
    """Mean squared error when every message is coded over its own min/max."""
    lo, hi = seen.mins.astype(np.float64), seen.maxs.astype(np.float64)
    if not per_channel:
        lo, hi = lo.min(axis=1, keepdims=True), hi.max(axis=1, keepdims=True)
    values = seen.values.astype(np.float64)
    return float(_squared_error(values, lo[:, :, None], hi[:, :, None], (1 << bits) - 1).mean())


def choose_range(
    seen: CutValues, bits: int, per_channel: bool, clip: str = "auto"
) -> tuple[np.ndarray, np.ndarray] | None:
    """The static range to send, or None where each message's own min/max is used."""
    if clip == "none":
        return None
    lo, hi = static_range(seen.values, bits, per_channel, "mse" if clip == "auto" else clip)
    if clip == "auto" and message_error(seen, bits, per_channel) < static_error(
        seen.values, lo, hi, bits
    ):
        return None
    return lo, hi


def _floats(array: np.ndarray) -> float | list[float]:
    """float32 values as JSON floats in their shortest exact spelling."""
    values = [float(str(v)) for v in np.asarray(array, np.float32).reshape(-1)]
    return values if np.ndim(array) else values[0]


def cut_ranges(seen: CutValues, clip: str = "auto") -> dict[str, ClipRange | None]:
    """The clip range of every calibrated codec at one cut; None: no static range."""
    ranges: dict[str, ClipRange | None] = {}
    for codec, (bits, per_channel) in CALIBRATED.items():
        chosen = choose_range(seen, bits, per_channel, clip)
        ranges[codec] = (
            None if chosen is None else ClipRange(lo=_floats(chosen[0]), hi=_floats(chosen[1]))
        )
    return ranges
