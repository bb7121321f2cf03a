"""Measured latency of a model's partitions on one host: what the planner's cost model reads.

Stored in the manifest (``profiles``), one per (host, execution provider); written by
``splitmq profile`` (``--providers``) and ``splitmq models build`` (CPU) through
``ModelVersion.save_profile``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from splitmq.shared.protocol.document import Document, Frozen


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


class Profile(Document):
    """Measured latency of partitions of one model on one host, on one execution provider.

    Heads (input -> cut), tails (cut -> outputs) and single segments (cut ->
    next cut) are measured whole, and are used as measured. Any other
    partition a -> b is predicted with an additive model fitted to all those
    measurements by least squares: the work of each segment, plus the cost of
    reading the input at a and writing the output at b (linear in their
    bytes: what a split adds), plus one run overhead. Summing raw segment
    times instead would count a boundary at every cut in between and miss the
    fusions across them (see ``bench/bench_profile_accuracy.py``).

    All of those are warm (back-to-back runs), as a tier serving many requests
    runs. A device sends one frame at a time and runs its head after an idle
    gap, with cold caches: ``cold_heads_ms`` times the heads that way (a tiny
    model can take 3x its warm time). Profiles from before it have none; the
    device then reads the warm heads (``device_heads_ms``).

    ``provider`` is the ONNX Runtime execution provider it ran on (``cpu``, ``cuda``, ...:
    ``model.providers``); profiles from before it ran on the CPU, so it defaults to
    ``cpu``. The planner prices a tier with the profile of the provider it reports.
    """

    LATER: ClassVar[frozenset[str]] = frozenset({"cold_heads_ms"})

    host: HostInfo
    provider: str = "cpu"  # the execution provider it was measured on
    heads_ms: list[float]  # heads_ms[b]: cut 0 -> cut b (heads_ms[0] = 0)
    tails_ms: list[float]  # tails_ms[a]: cut a -> outputs (tails_ms[last] = 0)
    segments_ms: list[float]  # segments_ms[a]: cut a -> cut a + 1
    overhead_ms: float  # cost of a session run that does no work
    work_ms: list[float]  # fitted: work of segment a -> a + 1 inside a longer run
    boundary: Boundary  # fitted: cost of a partition's input and output
    measured_at: float
    cold_heads_ms: list[float] | None = None  # heads after an idle gap (profiling.COLD_GAP_S)

    @staticmethod
    def key_of(raw: dict[str, Any]) -> tuple[object, str]:
        """What tells a stored profile (a manifest's JSON) from another: (host, provider)."""
        return raw.get("host"), raw.get("provider", "cpu")

    @property
    def device_heads_ms(self) -> list[float]:
        """The heads as a device runs them: cold where measured, else warm."""
        cold = self.cold_heads_ms
        return cold if cold is not None and len(cold) == len(self.heads_ms) else self.heads_ms

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
