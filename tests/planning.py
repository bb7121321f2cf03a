"""Planner test helpers: tiny models with profiles and calibration tables made to order."""

from __future__ import annotations

from pathlib import Path

import onnx

from splitmq.planner import Overheads
from splitmq.shared.model.calibration import (
    CalibrationSamples,
    CalibrationTable,
    ExitCurve,
    FidelityRow,
)
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.profile import Boundary, HostInfo, Profile

NO_OVERHEAD = Overheads(broker_ms=0.0, broker_ms_per_mb=0.0, device_ms=0.0)


def profile_of(segments: list[float]) -> Profile:
    """A profile where every segment a -> b costs exactly sum(segments[a:b]) ms."""
    last = len(segments)
    heads = [float(sum(segments[:b])) for b in range(last + 1)]
    tails = [float(sum(segments[a:])) for a in range(last + 1)]
    return Profile(
        host=HostInfo(cpu="test", cores=1, ort_version="0", threads=1),
        heads_ms=heads,
        tails_ms=tails,
        segments_ms=list(segments),
        overhead_ms=0.0,
        work_ms=list(segments),
        boundary=Boundary(
            input_ms_per_mb=0.0, output_ms_per_mb=0.0, fixed_ms=0.0, cut_mb=[0.0] * (last + 1)
        ),
        measured_at=1.0,
    )


def row(cut: int, codec: str, nbytes: float, agreement: float, enc: float = 0.0, dec: float = 0.0):
    return FidelityRow(cut, codec, nbytes, 1.0, agreement, None, 200, enc, dec)


def table(rows: list[FidelityRow], exits: list[ExitCurve] | None = None) -> CalibrationTable:
    samples = CalibrationSamples(
        calibration=1, evaluation=200, calibration_data="test", evaluation_data="test"
    )
    return CalibrationTable(
        clip="auto", created_at=1.0, samples=samples, cuts={}, fidelity=rows, exits=exits or []
    )


def add(tmp_path: Path, model: onnx.ModelProto, name: str) -> ModelVersion:
    onnx.save(model, tmp_path / f"{name}.onnx")
    return ModelPool(tmp_path / "pool").add(tmp_path / f"{name}.onnx", name)
