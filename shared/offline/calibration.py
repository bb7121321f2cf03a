"""Calibration: pick clip ranges on real samples and measure every (cut, codec).

`splitmq calibrate` runs real samples through a model, picks a clip range at
each candidate cut for ``q4``/``q2`` (one per tensor) and ``q4c``/``q2c`` (one
per channel, axis 1) (``clipping.choose_range``), then measures every (cut,
codec) pair on held-out samples (``fidelity.measure``), and the exit curves
of a multi-exit model (``exit_curves``). All go into the model version's
manifest as its ``CalibrationTable`` (``model.calibration``, where the
stored format is shown), replacing any earlier calibration. By default it
covers every cut a plan may use: the planner chooses only among measured
pairs, so a cut left out here is a plan it can never make.

Each codec gets its own range because the best clip depends on the bit width.
``clip4`` keeps its fixed default range [0, 32] (it is the codec that needs no
calibration), and cut 0 of a model with preprocessing travels as
``u8``/``jpeg:Q`` pixels, so neither is calibrated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from splitmq.shared.codecs.base import FLOAT_DTYPES
from splitmq.shared.errors import UserError
from splitmq.shared.model.calibration import (
    CalibrationSamples,
    CalibrationTable,
    ClipRange,
    ExitCurve,
    FidelityRow,
    params_for,
)
from splitmq.shared.model.cuts import pads_previous
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.offline.clipping import CutValues, check_clip, cut_ranges
from splitmq.shared.offline.exit_curves import exit_curves
from splitmq.shared.offline.fidelity import BATCH, Taps, measure
from splitmq.shared.offline.samples import Samples

#: Values kept per sample and cut, at most (spatial positions subsampled).
_KEEP_PER_SAMPLE = 1 << 15

#: (phase, done, total), for progress bars.
Progress = Callable[[str, int, int], None]


def default_cuts(mv: ModelVersion) -> list[int]:
    """Every cut a plan may send: all but the last (device-only sends nothing) and the
    cuts that only pad the one before (``model.cuts.pads_previous``).

    Raw fp32 size says little about what a cut costs to send: ReLU6 outputs
    are mostly zeros, so a later, larger cut can compress far better (cut 54
    of EfficientNet-Lite0: 250 kB in fp32, 5.6 kB as ``q4+zstd`` at 99%).
    """
    return [c for c in range(mv.last_cut) if not pads_previous(mv.graph, mv.cuts, c)]


def check_cuts(mv: ModelVersion, cuts: list[int]) -> list[int]:
    """Sorted, unique, existing cuts short of the last; a UserError otherwise."""
    for cut in cuts:
        mv.check_cut(cut)
        if cut == mv.last_cut:
            raise UserError(
                f"cut {cut} is the output of {mv.name}: a device-only plan sends no feature map"
            )
    return sorted(set(cuts))


def parse_cuts(mv: ModelVersion, text: str) -> list[int]:
    """``"3,14,21"`` or ``"all"`` (every cut short of the output) as checked cut indices."""
    if text.strip() == "all":
        return list(range(mv.last_cut))
    try:
        cuts = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(
            f"--cuts: expected cut indices like 3,14,21 or 'all', got {text!r}"
        ) from None
    return check_cuts(mv, cuts)


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
) -> dict[int, CutValues]:
    """What each cut holds over ``samples``: values (positions subsampled to bound
    memory) and every message's own per-channel extremes."""
    if not cuts:
        return {}
    taps = Taps(mv, cuts, threads)
    picks: dict[int, np.ndarray | None] = {}
    parts: dict[int, list[CutValues]] = {c: [] for c in cuts}
    total = -(-len(samples) // BATCH)
    for done, batch in enumerate(samples.batches(BATCH), 1):
        _, tensors = taps.run(batch.inputs)
        for cut in cuts:
            x = tensors[cut]
            view = x.reshape(len(x), x.shape[1] if x.ndim > 1 else 1, -1)
            if cut not in picks:  # seeded by the cut: the same ranges whatever else is calibrated
                keep, size = max(1, _KEEP_PER_SAMPLE // view.shape[1]), view.shape[2]
                rng = np.random.default_rng(cut)
                picks[cut] = np.sort(rng.choice(size, keep, replace=False)) if size > keep else None
            kept = view if picks[cut] is None else view[:, :, picks[cut]]
            parts[cut].append(CutValues(kept, view.min(axis=2), view.max(axis=2)))
        if progress:
            progress(done, total)
    return {cut: CutValues.join(parts[cut]) for cut in cuts}


@dataclass(frozen=True)
class Calibration:
    """Ranges and fidelity of one calibration run; ``table()`` is what the manifest keeps."""

    clip: str
    ranges: dict[str, dict[str, ClipRange | None]]  # cut (a JSON key) -> codec -> range
    rows: list[FidelityRow]
    accuracy: float | None  # of the uncompressed model on the evaluation samples
    samples: CalibrationSamples
    exits: list[ExitCurve]

    def table(self) -> CalibrationTable:
        return CalibrationTable(
            clip=self.clip,
            created_at=time.time(),
            samples=self.samples,
            accuracy=self.accuracy,
            cuts=self.ranges,
            fidelity=self.rows,
            exits=self.exits,
        )


def calibrate(
    mv: ModelVersion,
    calibration: Samples,
    evaluation: Samples,
    cuts: list[int] | None = None,
    clip: str = "auto",
    threads: int = 1,
    progress: Progress | None = None,
) -> Calibration:
    """Pick clip ranges on ``calibration``, measure every codec on ``evaluation``."""
    check_clip(clip)
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
    curves = exit_curves(
        mv, evaluation, threads, progress=progress and (lambda d, t: progress("exits", d, t))
    )
    samples = CalibrationSamples(
        calibration=len(calibration),
        evaluation=len(evaluation),
        calibration_data=calibration.source,
        evaluation_data=evaluation.source,
    )
    return Calibration(clip, ranges, rows, accuracy, samples, curves)


def save(mv: ModelVersion, result: Calibration) -> None:
    """Store ``result`` as the manifest's calibration, replacing any earlier one."""
    mv.save_calibration(result.table())
