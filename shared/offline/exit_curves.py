"""How often the exit heads of a multi-exit model answer, and how well, at each threshold.

A hop a -> b tries the exit heads its segment computes in output order and
answers from the first whose confidence (max softmax) reaches the hop's
threshold (``model.outputs.answer``). A hop holds the heads computed at cuts
in (a, b]: a run of consecutive heads along the network. Each such run gets
its curve, measured the same way on held-out samples: at every threshold,
the share of samples it answers and how many of those answers agree with the
unsplit model's top-1. The planner reads these curves; it never assumes an
exit rate or an exit's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splitmq.shared.model.calibration import ExitCurve
from splitmq.shared.model.outputs import class_of, softmax
from splitmq.shared.model.partition import exit_cut
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.offline.fidelity import BATCH, Taps
from splitmq.shared.offline.samples import Samples

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def exit_cuts(mv: ModelVersion) -> dict[str, int]:
    """Each exit head (every output but the last) and the cut where it is computed."""
    return {name: exit_cut(mv.graph, mv.cuts, name) for name in mv.exits}


def exit_curves(
    mv: ModelVersion,
    samples: Samples,
    threads: int = 1,
    thresholds: tuple[float, ...] = THRESHOLDS,
    progress: Callable[[int, int], None] | None = None,
) -> list[ExitCurve]:
    """One curve per run of consecutive exit heads (none for a model without exits)."""
    cuts = exit_cuts(mv)
    if not cuts:
        return []
    taps = Taps(mv, [], threads)
    heads = list(cuts)
    confidence: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    top1: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    reference = []
    total = -(-len(samples) // BATCH)
    for done, batch in enumerate(samples.batches(BATCH), 1):
        values = taps.outputs(batch.inputs)
        reference.append(class_of(values[taps.finals[0]]))
        for head in heads:
            probs = softmax(values[head].astype(np.float64))
            confidence[head].append(probs.max(-1))
            top1[head].append(probs.argmax(-1))
        if progress:
            progress(done, total)
    ref = np.concatenate(reference)
    conf = {h: np.concatenate(confidence[h]) for h in heads}
    agree = {h: np.concatenate(top1[h]) == ref for h in heads}
    right = None
    if samples.labels is not None:  # labelled: what each head gets right
        right = {h: np.concatenate(top1[h]) == samples.labels for h in heads}
        final_right = ref == samples.labels
    levels = sorted(set(cuts.values()))
    curves = []
    for i, low in enumerate(levels):
        for high in levels[i:]:
            group = [h for h in heads if low <= cuts[h] <= high]  # output order, as hops try
            curve = _curve(group, [cuts[h] for h in group], conf, agree, thresholds)
            if right is not None:
                accuracy = _delivered(group, conf, right, final_right, thresholds)
                curve = curve.model_copy(update={"accuracy": accuracy})
            curves.append(curve)
    return curves


def _delivered(
    group: list[str],
    conf: dict[str, np.ndarray],
    right: dict[str, np.ndarray],
    final: np.ndarray,
    thresholds: tuple[float, ...],
) -> list[float]:
    """Per threshold, the accuracy delivered: the first confident head answers, else the
    final output does."""
    found = []
    for t in thresholds:
        answered = np.zeros(len(final), dtype=bool)
        correct = np.zeros(len(final), dtype=bool)
        for head in group:
            mine = ~answered & (conf[head] >= t)
            correct |= mine & right[head]
            answered |= mine
        found.append(round(float((correct | (~answered & final)).mean()), 4))
    return found


def _curve(
    group: list[str],
    cuts: list[int],
    conf: dict[str, np.ndarray],
    agree: dict[str, np.ndarray],
    thresholds: tuple[float, ...],
) -> ExitCurve:
    n = len(next(iter(conf.values())))
    rates, agreements = [], []
    for t in thresholds:
        answered = np.zeros(n, dtype=bool)
        right = np.zeros(n, dtype=bool)
        for head in group:  # the first confident head answers
            mine = ~answered & (conf[head] >= t)
            right |= mine & agree[head]
            answered |= mine
        count = int(answered.sum())
        rates.append(round(count / n, 4))
        agreements.append(round(int(right.sum()) / count, 4) if count else None)
    return ExitCurve(
        outputs=group,
        cuts=cuts,
        thresholds=list(thresholds),
        exit_rate=rates,
        agreement=agreements,
        samples=n,
    )
