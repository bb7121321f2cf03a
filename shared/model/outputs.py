"""Reading a model's outputs: softmax, the answer its task gives (top-k, boxes or raw
tensors), when an exit head may answer, and how two answers agree.

One definition each, used by workers, devices, calibration and offline exit training.
A model's outputs are its exit heads first and its finals last (see
``ModelVersion.output_names``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import numpy as np

from splitmq.shared.model.detect import agreement, decode
from splitmq.shared.model.manifest import OutputSpec
from splitmq.shared.protocol.results import Box, RawOutput, TopK

TOP_K = 5
#: A raw answer agrees with the unsplit model's when every output is this close (L2).
RAW_TOLERANCE = 0.01


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
    return tuple(  # as Python numbers first: numpy's scalars cost more than the rest
        TopK(i, labels[i] if labels and i < len(labels) else None, round(p, 6))
        for i, p in zip(order.tolist(), probs[order].tolist(), strict=True)
    )


def answer(
    exits: Sequence[str],
    finals: Sequence[str],
    outputs: Mapping[str, np.ndarray],
    threshold: float | None,
) -> tuple[str, dict[str, np.ndarray]] | None:
    """The outputs to answer with: the finals if they were computed, else the first
    exit head whose confidence (max softmax) reaches ``threshold``; None: keep going.
    Returns the answering output's name and the values to read."""
    if all(name in outputs for name in finals):
        return finals[0], {name: outputs[name] for name in finals}
    if threshold is None:
        return None
    for name in exits:
        if name in outputs and softmax(outputs[name][0].reshape(-1)).max() >= threshold:
            return name, {name: outputs[name]}
    return None


def read(
    output: OutputSpec, labels: Sequence[str] | None, values: Mapping[str, np.ndarray]
) -> tuple[tuple[TopK, ...], tuple[Box, ...], tuple[RawOutput, ...]]:
    """One sample's answer as its task says: (top-k, boxes, raw outputs), two empty.
    ``values`` is what ``answer`` returned (an exit head is always a classifier's)."""
    if output.detect is not None and output.detect.heatmap in values:
        return (), decode(output.detect, values, labels), ()
    if output.task == "raw":
        return (), (), tuple(raw_output(name, value) for name, value in values.items())
    (scores,) = values.values()
    return top_k(scores[0], labels), (), ()


def raw_output(name: str, value: np.ndarray) -> RawOutput:
    """An output tensor as a raw answer carries it (float64 travels as float32)."""
    value = np.ascontiguousarray(value.astype(np.float32) if value.dtype == np.float64 else value)
    numbers = value.astype(np.float64)
    finite = numbers[np.isfinite(numbers)] if numbers.size else numbers
    low, high, mean = (
        (float(finite.min()), float(finite.max()), float(finite.mean()))
        if finite.size
        else (0, 0, 0)
    )
    return RawOutput(
        name,
        tuple(value.shape),
        str(value.dtype),
        low,
        high,
        mean,
        base64.b64encode(value.astype(value.dtype.newbyteorder("<")).tobytes()).decode(),
    )


def agreements(
    output: OutputSpec,
    finals: Sequence[str],
    reference: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Per sample of a batch, how far ``got`` agrees with ``reference`` (0..1): the same
    top-1 class; for a detector the share of matched boxes (``detect.agreement``); for a
    raw task, every output within ``RAW_TOLERANCE`` (relative L2 error)."""
    if output.detect is not None:
        return np.array(
            [
                agreement(
                    decode(output.detect, {k: v[i : i + 1] for k, v in reference.items()}, None),
                    decode(output.detect, {k: v[i : i + 1] for k, v in got.items()}, None),
                )
                for i in range(len(reference[finals[0]]))
            ]
        )
    if output.task == "raw":
        close = [_relative_error(reference[name], got[name]) <= RAW_TOLERANCE for name in finals]
        return np.all(close, axis=0).astype(np.float64)
    return (class_of(reference[finals[0]]) == class_of(got[finals[0]])).astype(np.float64)


def _relative_error(reference: np.ndarray, got: np.ndarray) -> np.ndarray:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    diff = got.reshape(len(got), -1).astype(np.float64) - ref
    return np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
