"""Measure a multi-exit model's exits on labelled data: the manifest's ``exits``.

The model's graph carries its temperatures (metadata ``splitmq.temperatures``,
one per output, folded into the outputs by the exporter), so the logits it
computes are calibrated; multiplying them back by T gives the raw ones, and
both calibration errors come from one run over the test split.
"""

from __future__ import annotations

import json

import numpy as np

from splitmq.shared.errors import UserError
from splitmq.shared.model.exits import ExitInfo, ExitReport, Policy, PolicyCurve
from splitmq.shared.model.graph import make_session, run_batched
from splitmq.shared.model.outputs import softmax
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.offline.exit_curves import exit_cuts
from splitmq.shared.offline.temperature import ece

TEMPERATURES_KEY = "splitmq.temperatures"
THRESHOLDS: dict[Policy, tuple[float, ...]] = {
    "max_softmax": (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999),
    "entropy": (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
}


def temperatures(mv: ModelVersion) -> list[float]:
    """The temperature of each output, as the exporter stored them in the graph."""
    meta = {p.key: p.value for p in mv.graph.model.metadata_props}
    if TEMPERATURES_KEY not in meta:
        raise UserError(f"{mv.name} has no temperatures: it was not exported calibrated")
    found = json.loads(meta[TEMPERATURES_KEY])
    if len(found) != len(mv.output_names):
        raise UserError(f"{mv.name}: {len(found)} temperatures for {len(mv.output_names)} outputs")
    return [float(t) for t in found]


def score(logits: np.ndarray, policy: Policy) -> np.ndarray:
    """Per sample, how sure: max softmax, or normalised entropy (0 = certain)."""
    p = softmax(logits.astype(np.float64))
    if policy == "max_softmax":
        return p.max(-1)
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(-1)
    return entropy / np.log(p.shape[-1])


def passes(value: np.ndarray, policy: Policy, threshold: float) -> np.ndarray:
    return value >= threshold if policy == "max_softmax" else value <= threshold


def outputs(mv: ModelVersion, inputs: np.ndarray, batch: int = 500) -> list[np.ndarray]:
    """Every output of the whole model (calibrated logits) for ``inputs``, N first,
    ``batch`` at a time (or as many as the model's fixed batch)."""
    session = make_session(mv.graph.model, 2)
    feed = mv.manifest.input.name
    return run_batched(session, mv.output_names, feed, inputs, mv.graph.batch, most=batch)


def measure(
    mv: ModelVersion, inputs: np.ndarray, labels: np.ndarray, data: str, validation: str
) -> ExitReport:
    """The exits of ``mv`` on labelled ``inputs`` (model inputs, N first)."""
    temps = temperatures(mv)
    calibrated = outputs(mv, inputs)
    cuts = exit_cuts(mv)
    exits = [
        ExitInfo(
            name=name,
            cut=cuts[name],
            temperature=temps[i],
            ece_before=ece(calibrated[i] * temps[i], labels),
            ece_after=ece(calibrated[i], labels),
        )
        for i, name in enumerate(mv.exits)
    ]
    right = [v.argmax(-1) == labels for v in calibrated]
    curves = [_curve(policy, calibrated, right) for policy in ("max_softmax", "entropy")]
    return ExitReport(
        data=data,
        samples=len(labels),
        validation=validation,
        exits=exits,
        curves=curves,
        final_accuracy=round(float(right[-1].mean()), 4),
        final_ece=ece(calibrated[-1], labels),
    )


def _curve(policy: Policy, logits: list[np.ndarray], right: list[np.ndarray]) -> PolicyCurve:
    n = len(right[0])
    scores = [score(v, policy) for v in logits[:-1]]
    rates, exited, delivered = [], [], []
    for t in THRESHOLDS[policy]:
        answered = np.zeros(n, dtype=bool)
        correct = np.zeros(n, dtype=bool)
        per_exit = []
        for s, ok in zip(scores, right[:-1], strict=True):  # the first exit that passes answers
            mine = ~answered & passes(s, policy, t)
            per_exit.append(round(float(mine.mean()), 4))
            correct |= mine & ok
            answered |= mine
        count = int(answered.sum())
        rates.append(per_exit)
        exited.append(round(int(correct.sum()) / count, 4) if count else None)
        delivered.append(round(float((correct | (~answered & right[-1])).mean()), 4))
    return PolicyCurve(
        policy=policy,
        thresholds=list(THRESHOLDS[policy]),
        exit_rate=rates,
        exited_accuracy=exited,
        accuracy=delivered,
    )
