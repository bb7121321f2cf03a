"""Reading a model's outputs: softmax, the top-k answer, and when an exit head may answer.

One definition each, used by workers, devices and offline exit training. A
model's outputs are its exit heads first and its final output last (see
``ModelVersion.output_names``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from splitmq.shared.protocol.results import TopK

TOP_K = 5


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def class_of(scores: np.ndarray) -> np.ndarray:
    """Each sample's class: the argmax over its scores, whatever singleton dims they have
    (``[N, 1000, 1, 1]`` as ``[N, 1000]``)."""
    return np.asarray(scores).reshape(len(scores), -1).argmax(-1)


def top_k(logits: np.ndarray, labels: Sequence[str] | None, k: int = TOP_K) -> tuple[TopK, ...]:
    """The ``k`` most probable classes; a label only where the label file has one.
    Singleton dims are squeezed: a [1000, 1, 1] output (SqueezeNet's) is 1000 classes."""
    probs = softmax(np.asarray(logits, np.float64).reshape(-1))
    order = np.argsort(-probs)[:k]
    return tuple(
        TopK(int(i), labels[i] if labels and i < len(labels) else None, round(float(probs[i]), 6))
        for i in order
    )


def answer(
    output_names: Sequence[str], outputs: Mapping[str, np.ndarray], threshold: float | None
) -> tuple[str, np.ndarray] | None:
    """The output to answer with: the final output if it was computed, else the first
    exit head whose confidence (max softmax) reaches ``threshold``; None: keep going."""
    final = output_names[-1]
    if final in outputs:
        return final, outputs[final][0]
    if threshold is None:
        return None
    for name in output_names[:-1]:
        if name in outputs and softmax(outputs[name][0].reshape(-1)).max() >= threshold:
            return name, outputs[name][0]
    return None
