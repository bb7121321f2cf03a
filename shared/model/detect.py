"""A detector's answer: decoding its heads into boxes, NMS, and how two answers agree.

Decoding is declared in the model's config (``DetectSpec``) and runs on the tier that
computes the heads, so only boxes travel. CenterNet-style heads ("objects as points",
as CenterFace uses them): a cell of the heatmap that is a 3x3 local maximum over
``score`` is an object's centre; the size and offset heads at that cell give its box.
Greedy NMS then drops boxes that overlap a better one of the same class by more than
``iou``.

Two answers agree as far as their boxes match one to one (same class, IoU >= 0.5,
best first): ``agreement`` is the matched share, so a cut or a codec is calibrated and
planned for a detector as the top-1 agreement is for a classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from splitmq.shared.model.manifest import DetectSpec
from splitmq.shared.protocol.results import Box

MATCH_IOU = 0.5  # boxes of two answers match at this overlap or more (as COCO's AP50)
BOUND = 1e6  # pixels: a corner further out is a wild head value, clipped


def decode(
    spec: DetectSpec, heads: Mapping[str, np.ndarray], labels: Sequence[str] | None
) -> tuple[Box, ...]:
    """The boxes of one sample (the heads' first row), best first."""
    heatmap = np.asarray(heads[spec.heatmap][0], np.float32)
    size = np.asarray(heads[spec.size][0], np.float32)
    offset = np.asarray(heads[spec.offset][0], np.float32)
    if spec.order == "xy":
        size, offset = size[::-1], offset[::-1]  # rows: (y, x) from here on
    padded = np.pad(heatmap, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    rows, cols = heatmap.shape[1:]
    peak = np.max(
        [padded[:, dy : dy + rows, dx : dx + cols] for dy in range(3) for dx in range(3)],
        axis=0,
    )
    cls, ys, xs = np.nonzero((heatmap >= spec.score) & (heatmap >= peak))
    scores = heatmap[cls, ys, xs]
    hw = size[:, ys, xs]
    if spec.size_encoding == "log":
        hw = np.exp(np.minimum(hw, 20.0))  # a wild value is a huge box, not an overflow
    hw = np.maximum(hw, 0) * spec.stride  # a regression head may dip below 0 at weak peaks
    cy = (ys + offset[0, ys, xs] + 0.5) * spec.stride
    cx = (xs + offset[1, ys, xs] + 0.5) * spec.stride
    corners = np.stack([cx - hw[1] / 2, cy - hw[0] / 2, cx + hw[1] / 2, cy + hw[0] / 2], 1)
    corners = np.clip(np.nan_to_num(corners, nan=0.0), -BOUND, BOUND)  # what a Box may hold
    keep = nms(corners, scores, cls, spec.iou)[: spec.max_boxes]
    return tuple(
        Box(
            int(cls[i]),
            labels[cls[i]] if labels and cls[i] < len(labels) else None,
            round(float(scores[i]), 6),
            tuple(round(float(v), 2) for v in corners[i]),  # type: ignore[arg-type]
        )
        for i in keep
    )


def nms(corners: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS per class: indices kept, best score first."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    kept: list[int] = []
    while order:
        best, order = order[0], order[1:]
        kept.append(best)
        if order:
            rest = np.array(order)
            overlap = overlaps(corners[best][None], corners[rest])[0]
            order = [
                i
                for i, o, c in zip(order, overlap, classes[rest])
                if o <= iou or c != classes[best]
            ]
    return kept


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b`` (corners ``[x0, y0, x1, y1]``)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def agreement(reference: Sequence[Box], got: Sequence[Box], iou: float = MATCH_IOU) -> float:
    """How far ``got`` agrees with ``reference``: boxes matched one to one (same class,
    IoU >= ``iou``, best score first) over the boxes of the larger answer; 1.0 when
    both found nothing."""
    if not reference and not got:
        return 1.0
    if not reference or not got:
        return 0.0
    ious = overlaps(np.array([r.box for r in reference]), np.array([g.box for g in got]))
    taken: set[int] = set()
    matched = 0
    for i in np.argsort([-r.score for r in reference], kind="stable"):
        candidates = [
            j
            for j in np.argsort(-ious[i], kind="stable")
            if j not in taken and ious[i, j] >= iou and got[j].index == reference[i].index
        ]
        if candidates:
            taken.add(int(candidates[0]))
            matched += 1
    return matched / max(len(reference), len(got))
