"""The typed manifest stored beside each model version in the pool.

It is the single source of truth a worker on another host needs: the file's
hash, what goes in and out, how to preprocess, the cut table, measured
profiles and (after `splitmq calibrate`) clip ranges and codec fidelity.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from splitmq.shared.model.cuts import Cut

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


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


class Boundary(Frozen):
    """Fitted cost of a partition's boundaries: input at cut a, output at cut b."""

    input_ms_per_mb: float
    output_ms_per_mb: float
    fixed_ms: float
    cut_mb: list[float]  # fp32 megabytes at each cut

    def ms(self, a: int, b: int) -> float:
        return (
            self.input_ms_per_mb * self.cut_mb[a]
            + self.output_ms_per_mb * self.cut_mb[b]
            + self.fixed_ms
        )


class Profile(Frozen):
    """Measured latency of partitions of one model on one host.

    Heads (input -> cut), tails (cut -> outputs) and single segments (cut ->
    next cut) are measured whole, and are used as measured. Any other
    partition a -> b is predicted with an additive model fitted to all those
    measurements by least squares: the work of each segment, plus the cost of
    reading the input at a and writing the output at b (linear in their
    bytes: what a split adds), plus one run overhead. Summing raw segment
    times instead would count a boundary at every cut in between and miss the
    fusions across them (see ``bench/bench_profile_accuracy.py``).
    """

    host: HostInfo
    heads_ms: list[float]  # heads_ms[b]: cut 0 -> cut b (heads_ms[0] = 0)
    tails_ms: list[float]  # tails_ms[a]: cut a -> outputs (tails_ms[last] = 0)
    segments_ms: list[float]  # segments_ms[a]: cut a -> cut a + 1
    overhead_ms: float  # cost of a session run that does no work
    work_ms: list[float]  # fitted: work of segment a -> a + 1 inside a longer run
    boundary: Boundary  # fitted: cost of a partition's input and output
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
            ms = self.boundary.ms(a, b) + sum(self.work_ms[a:b]) + self.overhead_ms
            ms = max(ms, self.overhead_ms)
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

    @field_validator("profiles", mode="before")
    @classmethod
    def _drop_stale_profiles(cls, value: Any) -> Any:
        """Profiles from an older splitmq are dropped (re-run `splitmq profile`), not fatal."""
        if not isinstance(value, list):
            return value
        kept = []
        for item in value:
            try:
                kept.append(Profile.model_validate(item))
            except ValidationError:
                log.warning("dropping a stale profile (re-run `splitmq profile` to replace it)")
        return kept

    def profile_for(self, host: HostInfo) -> Profile | None:
        return next((p for p in self.profiles if p.host == host), None)
