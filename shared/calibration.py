"""Calibrated clip ranges for the quantising codecs, and where the planner finds them.

`splitmq calibrate` runs real samples through a model, picks a clip range at
each candidate cut for ``q4``/``q2`` (one per tensor) and ``q4c``/``q2c`` (one
per channel, axis 1), then measures every (cut, codec) pair on held-out
samples (``fidelity.measure``). Both go into the model version's manifest,
replacing any earlier calibration, under ``calibration``::

    {"format": 1, "clip": "mse", "created_at": <unix time>,
     "samples": {"calibration": 100, "evaluation": 200,
                 "calibration_data": "...", "evaluation_data": "..."},
     "accuracy": <uncompressed top-1 accuracy on the evaluation set, or null>,
     "cuts": {"13": {"q4": {"lo": -3.1, "hi": 4.2},
                     "q4c": {"lo": [...], "hi": [...]},   # one float per channel
                     "q2": {...}, "q2c": {...}}, ...},
     "fidelity": [{"cut", "codec", "bytes", "ratio", "agreement", "accuracy"}, ...]}

Each codec gets its own range because the best clip depends on the bit width:
with 4 levels (2 bits) clipping the tails costs less than the coarse steps a
full range forces. The default search (``clip="mse"``) picks, per tensor or
channel, the candidate range with the least reconstruction error on the
calibration data; ``bench/bench_fidelity.py --compare-clips`` measures it
against min/max and fixed percentiles in top-1 agreement. ``clip4`` keeps its
fixed default range [0, 32]: it is the codec that needs no calibration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from splitmq.shared.codecs import parse_codec
from splitmq.shared.codecs_base import FLOAT_DTYPES
from splitmq.shared.errors import UserError
from splitmq.shared.fidelity import BATCH, FidelityRow, Samples, Taps, measure
from splitmq.shared.pool import ModelVersion

CALIBRATION_FORMAT = 1
#: Codec -> (bits, per channel): the codecs whose clip range is calibrated.
CALIBRATED = {"q4": (4, False), "q4c": (4, True), "q2": (2, False), "q2c": (2, True)}
#: How a range is picked: least reconstruction error, the extremes, or fixed quantiles.
CLIPS = ("mse", "minmax", "p99.9", "p99.99")
#: Fractions cut off each tail that the "mse" search tries (0: the min/max).
_TAILS = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.06, 0.1)
_PERCENTILE_TAILS = {"minmax": 0.0, "p99.9": 1e-3, "p99.99": 1e-4}
#: Values kept per sample and cut (spatial positions subsampled), and per range search.
_KEEP_PER_SAMPLE = 1 << 15
_SEARCH_VALUES = 1 << 20

#: (phase, done, total), for progress bars.
Progress = Callable[[str, int, int], None]


def default_cuts(mv: ModelVersion) -> list[int]:
    """Cut 0, then each cut sending fewer fp32 bytes than every earlier one; never the last.

    A later cut that sends more bytes than an earlier one is dominated: it costs
    more device compute and more bandwidth. The last cut (device only) sends
    no feature map at all.
    """
    cuts, smallest = [0], mv.cuts[0].bytes
    for cut in mv.cuts[1:-1]:
        if cut.bytes < smallest:
            cuts.append(cut.index)
            smallest = cut.bytes
    return cuts


def check_cuts(mv: ModelVersion, cuts: list[int]) -> list[int]:
    """Sorted, unique, existing cuts short of the last; a UserError otherwise."""
    for cut in cuts:
        mv.check_cut(cut)
        if cut == mv.last_cut:
            raise UserError(
                f"cut {cut} is the output of {mv.name}: a device-only plan sends no feature map"
            )
    return sorted(set(cuts))


def _by_channel(values: np.ndarray, per_channel: bool) -> np.ndarray:
    """(N, C, S) values as (C, N·S) per channel or (1, N·C·S), at most _SEARCH_VALUES."""
    if per_channel:
        rows = values.transpose(1, 0, 2).reshape(values.shape[1], -1)
    else:
        rows = values.reshape(1, -1)
    step = -(-rows.size // _SEARCH_VALUES)
    return rows[:, ::step].astype(np.float64)


def _mse(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Mean squared reconstruction error per row of ``levels``-step codes over [lo, hi]."""
    step = np.maximum((hi - lo) / levels, 1e-30)[:, None]
    codes = np.clip(np.floor((rows - lo[:, None]) / step + 0.5), 0, levels)
    return ((codes * step + lo[:, None] - rows) ** 2).mean(axis=1)


def _candidates(rows: np.ndarray, clip: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if clip in _PERCENTILE_TAILS:
        tail = _PERCENTILE_TAILS[clip]
        low, high = np.quantile(rows, [tail, 1 - tail], axis=1)
        return [(low, high)]
    if clip != "mse":
        raise UserError(f"unknown clip method {clip!r}; known: {', '.join(CLIPS)}")
    quantiles = np.quantile(rows, [*_TAILS, *(1 - t for t in _TAILS)], axis=1)
    lows, highs = quantiles[: len(_TAILS)], quantiles[len(_TAILS) :]
    # Both tails clipped, or only the top one: a floor such as ReLU's 0 is kept exact.
    return [(lows[i], highs[i]) for i in range(len(_TAILS))] + [
        (lows[0], highs[i]) for i in range(1, len(_TAILS))
    ]


def clip_range(
    values: np.ndarray, bits: int, per_channel: bool, clip: str = "mse"
) -> tuple[np.ndarray, np.ndarray]:
    """Clip range (lo, hi) for ``bits``-bit codes of ``values`` (N, C, S): shape (C,) or ().

    A constant row gets [c, c + max(|c|, 1)]: c stays exact at code 0, as the
    codec itself does for a constant tensor.
    """
    rows = _by_channel(values, per_channel)
    levels = (1 << bits) - 1
    candidates = _candidates(rows, clip)
    errors = np.stack([_mse(rows, lo, hi, levels) for lo, hi in candidates])
    best = errors.argmin(axis=0)
    lo = np.choose(best, [c[0] for c in candidates])
    hi = np.choose(best, [c[1] for c in candidates])
    flat = ~(hi - lo > 1e-6 * np.maximum(np.abs(lo), 1))
    hi = np.where(flat, lo + np.maximum(np.abs(lo), 1), hi)
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    return (lo32, hi32) if per_channel else (lo32[0], hi32[0])


def _floats(array: np.ndarray) -> float | list[float]:
    """float32 values as JSON floats in their shortest exact spelling."""
    values = [float(str(v)) for v in np.asarray(array, np.float32).reshape(-1)]
    return values if np.ndim(array) else values[0]


def cut_ranges(values: np.ndarray, clip: str = "mse") -> dict[str, dict]:
    """Params ``{"lo", "hi"}`` for every calibrated codec, from one cut's values (N, C, S)."""
    ranges = {}
    for codec, (bits, per_channel) in CALIBRATED.items():
        lo, hi = clip_range(values, bits, per_channel, clip)
        ranges[codec] = {"lo": _floats(lo), "hi": _floats(hi)}
    return ranges


def _calibrated_cuts(mv: ModelVersion, cuts: list[int], samples: Samples) -> list[int]:
    """Cuts carrying a float feature map (cut 0 with pixels sends u8 or JPEG instead)."""
    return [
        c
        for c in cuts
        if mv.cuts[c].dtype in FLOAT_DTYPES and not (c == 0 and samples.pixels is not None)
    ]


def collect(
    mv: ModelVersion,
    cuts: list[int],
    samples: Samples,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, np.ndarray]:
    """Values at each cut over ``samples`` as (N, C, S), S subsampled to bound memory."""
    if not cuts:
        return {}
    taps = Taps(mv, cuts, threads)
    rng = np.random.default_rng(0)
    picks: dict[int, np.ndarray] = {}
    parts: dict[int, list[np.ndarray]] = {c: [] for c in cuts}
    total = -(-len(samples) // BATCH)
    for done, batch in enumerate(samples.batches(BATCH), 1):
        _, tensors = taps.run(batch.inputs)
        for cut in cuts:
            x = tensors[cut]
            view = x.reshape(len(x), x.shape[1] if x.ndim > 1 else 1, -1)
            if cut not in picks:
                keep = max(1, _KEEP_PER_SAMPLE // view.shape[1])
                size = view.shape[2]
                picks[cut] = np.sort(rng.choice(size, keep, replace=False)) if size > keep else None
            parts[cut].append(view if picks[cut] is None else view[:, :, picks[cut]])
        if progress:
            progress(done, total)
    return {cut: np.concatenate(parts[cut]) for cut in cuts}


def params_for(ranges: dict, cut: int, codec: str) -> dict | None:
    """The params to encode ``codec`` with at ``cut``, from a ``cuts`` map as stored."""
    base = parse_codec(codec).base
    entry = ranges.get(str(cut), {}).get(base) if base in CALIBRATED else None
    return None if entry is None else {"lo": entry["lo"], "hi": entry["hi"]}


def codec_params(mv: ModelVersion, cut: int, codec: str) -> dict | None:
    """Params (``lo``, ``hi``) to pass to ``encode`` for ``codec`` at ``cut`` of ``mv``.

    Per-channel lists for ``q4c``/``q2c``, floats for ``q4``/``q2``. None when the
    codec takes no calibration (``clip4`` keeps its fixed range) or the cut was
    not calibrated: the codec then uses each tensor's own min/max.
    """
    return params_for(mv.manifest.calibration.get("cuts", {}), cut, codec)


@dataclass(frozen=True)
class Calibration:
    """Ranges and fidelity of one calibration run, as ``save`` stores them."""

    clip: str
    ranges: dict[str, dict[str, dict]]  # cut (as a JSON key) -> codec -> params
    rows: list[FidelityRow]
    accuracy: float | None  # of the uncompressed model on the evaluation samples
    samples: dict[str, int | str]

    def to_json(self) -> dict:
        return {
            "format": CALIBRATION_FORMAT,
            "clip": self.clip,
            "created_at": time.time(),
            "samples": self.samples,
            "accuracy": self.accuracy,
            "cuts": self.ranges,
            "fidelity": [row.to_json() for row in self.rows],
        }


def calibrate(
    mv: ModelVersion,
    calibration: Samples,
    evaluation: Samples,
    cuts: list[int] | None = None,
    clip: str = "mse",
    threads: int = 1,
    progress: Progress | None = None,
) -> Calibration:
    """Pick clip ranges on ``calibration``, measure every codec on ``evaluation``."""
    cuts = check_cuts(mv, default_cuts(mv) if cuts is None else cuts)
    wanted = _calibrated_cuts(mv, cuts, calibration)
    values = collect(
        mv, wanted, calibration, threads, progress and (lambda d, t: progress("calibrating", d, t))
    )
    ranges = {str(cut): cut_ranges(values.pop(cut), clip) for cut in wanted}
    rows, accuracy = measure(
        mv,
        evaluation,
        cuts,
        lambda cut, codec: params_for(ranges, cut, codec),
        threads,
        progress and (lambda d, t: progress("measuring", d, t)),
    )
    samples: dict[str, int | str] = {
        "calibration": len(calibration),
        "evaluation": len(evaluation),
        "calibration_data": calibration.source,
        "evaluation_data": evaluation.source,
    }
    return Calibration(clip, ranges, rows, accuracy, samples)


def save(mv: ModelVersion, result: Calibration) -> None:
    """Store ``result`` as the manifest's calibration, replacing any earlier one."""
    doc = result.to_json()
    mv.update(lambda raw: raw.__setitem__("calibration", doc))
