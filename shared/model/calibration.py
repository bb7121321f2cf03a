"""The calibration table a model version carries: clip ranges and measured fidelity.

Written by ``splitmq calibrate`` (``offline.calibration``) into the manifest;
read when encoding (``codec_params``: devices and workers) and by the planner
(``fidelity``: bytes, agreement and codec time of each (cut, codec);
``exits``: how often exit heads answer and how well; all measured on held-out
data, never assumed). Stored as::

    {"v": 1, "clip": "auto", "created_at": <unix time>,
     "samples": {"calibration": 100, "evaluation": 200,
                 "calibration_data": "...", "evaluation_data": "..."},
     "accuracy": <uncompressed top-1 accuracy on the evaluation samples, or null>,
     "cuts": {"13": {"q4": {"lo": -3.1, "hi": 4.2},
                     "q4c": {"lo": [...], "hi": [...]},   # one float per channel
                     "q2c": null},   # null: each message's own min/max does better
              ...},
     "fidelity": [{"cut", "codec", "bytes", "ratio", "agreement", "accuracy", "samples",
                   "encode_ms", "decode_ms"}, ...],
     "exits": [{"outputs", "cuts", "thresholds", "exit_rate", "agreement", "samples"}, ...]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from splitmq.shared.codecs import parse_codec
from splitmq.shared.protocol.document import Document, Frozen

Fraction = Annotated[float, Field(ge=0, le=1)]

#: Codecs with a calibrated clip range: bits, and whether the range is per channel.
CALIBRATED: dict[str, tuple[int, bool]] = {
    "q4": (4, False),
    "q4c": (4, True),
    "q2": (2, False),
    "q2c": (2, True),
}


class ClipRange(Frozen):
    """``lo``/``hi`` for ``encode``: floats per tensor, or one float per channel."""

    lo: float | list[float]
    hi: float | list[float]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class FidelityRow:
    """One (cut, codec) pair measured on held-out samples (contract of `calibrate --json`)."""

    cut: Annotated[int, Field(ge=0)]
    codec: str
    bytes: Annotated[float, Field(gt=0)]  # mean per sample: codec data plus params as msgpack
    ratio: Annotated[float, Field(gt=0)]  # fp32 bytes at the cut / bytes
    agreement: Fraction  # agrees with the uncompressed model (top-1; a detector: its boxes)
    accuracy: Fraction | None  # top-1 equal to the label; None: no labels
    samples: Annotated[int, Field(ge=1)]  # held-out samples behind agreement and accuracy
    encode_ms: Annotated[float, Field(ge=0)]  # median per sample on the calibrating host
    decode_ms: Annotated[float, Field(ge=0)]  # the same, decoding (and normalising pixels)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class ExitCurve(Frozen):
    """How often a group of exit heads answers at each threshold, and how well.

    ``outputs`` are the exit heads one hop computes, in the order it tries
    them (``model.outputs.answer``), and ``cuts`` where each is computed: a
    segment a -> b holds a head computed at k when a < k <= b. At threshold
    ``thresholds[i]`` a fraction ``exit_rate[i]`` of the held-out samples is
    answered by one of them, and ``agreement[i]`` of those answers have the
    unsplit model's top-1 (None: none answered). With labelled samples,
    ``accuracy[i]`` is the top-1 accuracy delivered when the final output answers
    the rest (what an accuracy target is checked against).
    """

    outputs: list[str]
    cuts: list[int]
    thresholds: list[Fraction]
    exit_rate: list[Fraction]
    agreement: list[Fraction | None]
    samples: int = Field(ge=1)
    accuracy: list[Fraction] | None = None


class CalibrationSamples(Frozen):
    calibration: int = Field(ge=0)
    evaluation: int = Field(ge=1)
    calibration_data: str
    evaluation_data: str


#: cut (a JSON key) -> calibrated codec -> its range, or None (the message's own min/max).
ClipTable = Mapping[str, Mapping[str, ClipRange | None]]


class CalibrationTable(Document):
    clip: str
    created_at: float
    samples: CalibrationSamples
    accuracy: float | None = Field(None, ge=0, le=1)
    cuts: dict[str, dict[str, ClipRange | None]]
    fidelity: list[FidelityRow]
    exits: list[ExitCurve] = Field(default_factory=list)

    def params(self, cut: int, codec: str) -> dict[str, object] | None:
        return params_for(self.cuts, cut, codec)

    def row(self, cut: int, codec: str) -> FidelityRow | None:
        """The measured fidelity of ``codec`` at ``cut``, if it was measured."""
        return next((r for r in self.fidelity if r.cut == cut and r.codec == codec), None)


def params_for(ranges: ClipTable, cut: int, codec: str) -> dict[str, object] | None:
    """Params (``lo``, ``hi``) to pass to ``encode`` for ``codec`` at ``cut``.

    None when the codec takes no calibration (``clip4`` keeps its fixed range),
    the cut was not calibrated, or calibration found each message's own min/max
    reconstructs better there: the codec then uses the tensor's own min/max.
    """
    base = parse_codec(codec).base
    entry = ranges.get(str(cut), {}).get(base) if base in CALIBRATED else None
    return None if entry is None else {"lo": entry.lo, "hi": entry.hi}
