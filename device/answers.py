"""What a device hands back for each frame: an ``Answer``, or ``InferenceFailed``."""

from __future__ import annotations

from dataclasses import dataclass

from splitmq.shared.errors import SplitMQError
from splitmq.shared.protocol.results import HopLatency, TopK


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

    @property
    def top1(self) -> int:
        return self.top[0].index

    @property
    def label(self) -> str | None:
        """The top class's name (None when the model has no labels)."""
        return self.top[0].label

    @property
    def score(self) -> float:
        """The top class's softmax score."""
        return self.top[0].score
