"""Temperature scaling and calibration error, for the exit heads' confidences.

An exit answers when its confidence (max softmax) reaches a threshold, so the
confidence must mean what it says: among answers given with confidence 0.9,
nine in ten should be right. Temperature scaling (Guo et al., 2017) divides
an exit's logits by one scalar T fitted to minimise the negative
log-likelihood on held-out labelled samples; it changes no prediction, only
how sure each one claims to be. The expected calibration error (ECE) is the
gap between confidence and accuracy, averaged over ``BINS`` equal-width
confidence bins weighted by how many samples fall in each.
"""

from __future__ import annotations

import numpy as np

from splitmq.shared.model.outputs import softmax

BINS = 15


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits.astype(np.float64) / temperature)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-300))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL: golden-section search on log T (the NLL
    is convex in 1/T, so it is unimodal in log T)."""
    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return round(float(np.exp((lo + hi) / 2)), 4)


def reliability(
    logits: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (NaN where empty)."""
    p = softmax(logits.astype(np.float64))
    conf, right = p.max(-1), p.argmax(-1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        accuracy = np.bincount(which, right.astype(float), bins) / count
    return mean_conf, accuracy, count


def ece(logits: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    mean_conf, accuracy, count = reliability(logits, labels, bins)
    full = count > 0
    gap = np.abs(mean_conf[full] - accuracy[full]) * count[full]
    return round(float(gap.sum() / count.sum()), 4)
