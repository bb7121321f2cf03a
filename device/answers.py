"""What a device hands back for each frame: an ``Answer``, or ``InferenceFailed``."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from splitmq.shared.errors import SplitMQError
from splitmq.shared.protocol.results import Box, HopLatency, RawOutput, Result, TopK


class InferenceFailed(SplitMQError):
    """A request ended without a result: a worker's error, or no answer in time."""

    def __init__(self, request_id: str, code: str, message: str) -> None:
        super().__init__(f"request {request_id}: {code}: {message}")
        self.request_id, self.code = request_id, code


@dataclass(frozen=True)
class Answer:
    """A result as the device sees it: the worker's answer plus end-to-end facts."""

    id: str
    top: tuple[TopK, ...]
    tier: str  # "device", "edge" or "cloud"
    exit: str | int
    latency: tuple[HopLatency, ...]
    bytes_sent: int
    e2e_ms: float
    attempts: int
    boxes: tuple[Box, ...] = ()  # a detector's answer
    outputs: tuple[RawOutput, ...] = ()  # a raw task's answer
    fallback: str | None = None  # why the device answered in its plan's tier's place

    @classmethod
    def of(
        cls,
        result: Result,
        bytes_sent: int,
        e2e_ms: float,
        attempts: int,
        fallback: str | None = None,
    ) -> Answer:
        """The device's view of ``result``, whichever tier published it."""
        return cls(
            result.id,
            result.top,
            result.tier,
            result.exit,
            result.latency,
            bytes_sent,
            e2e_ms,
            attempts,
            result.boxes,
            result.outputs,
            fallback,
        )

    @property
    def top1(self) -> int:
        """The top class (a detector's: its best box's; -1 when nothing was found)."""
        best = self._best
        return -1 if best is None else best.index

    @property
    def label(self) -> str | None:
        """The top class's name (None when the model has no labels or found nothing)."""
        best = self._best
        return None if best is None else best.label

    @property
    def score(self) -> float:
        """The top class's softmax score (a detector's best box's score; 0 for none)."""
        best = self._best
        return 0.0 if best is None else best.score

    @property
    def _best(self) -> TopK | Box | None:
        if self.top:
            return self.top[0]
        return max(self.boxes, key=lambda b: b.score, default=None)

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        """A raw task's output tensors by name, as arrays."""
        return {o.name: raw_array(o) for o in self.outputs}


def raw_array(output: RawOutput) -> np.ndarray:
    """The values a ``RawOutput`` carries."""
    data = base64.b64decode(output.data, validate=True)
    return np.frombuffer(data, np.dtype(output.dtype).newbyteorder("<")).reshape(output.shape)
