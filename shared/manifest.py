"""The typed manifest stored beside each model version in the pool.

It is the single source of truth a worker on another host needs: the file's
hash, what goes in and out, how to preprocess, the cut table, measured
profiles and (after `splitmq calibrate`) clip ranges and codec fidelity.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from splitmq.shared.cuts import Cut

MANIFEST_FORMAT = 1
# Partitions this many segments long or longer are predicted from heads and tails alone.
BLEND_SEGMENTS = 4


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(Frozen):
    name: str
    shape: list[int]  # per sample, batch 1
    dtype: str
    bytes: int


class Preprocess(Frozen):
    """How a uint8 image becomes the model input: resize, crop, (x - mean) / std, NCHW."""

    channels: str = Field("RGB", pattern="^(RGB|L)$")
    resize: int | None = None  # shorter side, before the centre crop
    size: tuple[int, int]  # (height, width) fed to the model
    mean: list[float]  # per channel, in 0..255 pixel units
    std: list[float]


class HostInfo(Frozen):
    cpu: str
    cores: int
    ort_version: str
    threads: int


class Profile(Frozen):
    """Measured latency of partitions of one model on one host.

    Heads (input -> cut), tails (cut -> outputs) and single segments (cut ->
    next cut) are measured whole. A longer partition a -> b is not the sum of
    its segments: every run pays for reading its input and writing its output,
    and fusions across a boundary are lost. With F the full model and o the
    run overhead, ``head(b) + tail(a) - F - o`` counts the work a -> b plus
    exactly one input and one output boundary, as the real partition does; it
    is a difference of large numbers, so for partitions of a few segments it
    is blended with the segment sum (see ``bench/bench_profile_accuracy.py``).
    """

    host: HostInfo
    heads_ms: list[float]  # heads_ms[b]: cut 0 -> cut b (heads_ms[0] = 0)
    tails_ms: list[float]  # tails_ms[a]: cut a -> outputs (tails_ms[last] = 0)
    segments_ms: list[float]  # segments_ms[a]: cut a -> cut a + 1
    overhead_ms: float  # cost of a session run that does no work
    measured_at: float

    def predict_ms(self, a: int, b: int, speed: float = 1.0) -> float:
        """Latency of partition a -> b; ``speed`` < 1 emulates a slower device."""
        last = len(self.heads_ms) - 1
        if not 0 <= a <= b <= last:
            raise ValueError(f"no partition {a} -> {b} in a model with cuts 0..{last}")
        if a == b:
            ms = 0.0
        elif b == a + 1:
            ms = self.segments_ms[a]
        elif a == 0:
            ms = self.heads_ms[b]
        elif b == last:
            ms = self.tails_ms[a]
        else:
            full = self.heads_ms[last]
            whole = self.heads_ms[b] + self.tails_ms[a] - full - self.overhead_ms
            summed = sum(self.segments_ms[a:b]) - (b - a - 1) * self.overhead_ms
            weight = min(1.0, (b - a - 1) / BLEND_SEGMENTS)
            ms = max((1 - weight) * summed + weight * whole, self.overhead_ms)
        return ms / speed


class Manifest(Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    format: int = MANIFEST_FORMAT
    name: str
    version: int
    sha256: str
    size: int
    source: str
    input: TensorSpec
    outputs: list[TensorSpec]
    preprocess: Preprocess | None = None
    labels: str | None = None  # file name beside the manifest, one label per line
    cuts: list[Cut]
    profiles: list[Profile] = []
    calibration: dict[str, Any] = {}

    def profile_for(self, host: HostInfo) -> Profile | None:
        return next((p for p in self.profiles if p.host == host), None)
