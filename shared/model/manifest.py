"""The typed manifest stored beside each model version in the pool.

It is the single source of truth a worker on another host needs: the file's
hash, what goes in and out, how to preprocess, the cut table, measured
profiles and (after `splitmq calibrate`) clip ranges and codec fidelity.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from splitmq.shared.model.calibration import CalibrationTable
from splitmq.shared.model.exits import ExitReport
from splitmq.shared.model.profile import HostInfo, Profile
from splitmq.shared.protocol.document import Frozen

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Cut:
    """One row of a model version's cut table (the contract of `inspect --json`)."""

    index: int
    name: str
    shape: list[int]
    dtype: str
    bytes: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    def to_json(self) -> dict:
        return asdict(self)


class TensorSpec(Frozen):
    name: str
    shape: list[int]  # per sample, batch 1
    dtype: str
    bytes: int


class Preprocess(Frozen):
    """How a uint8 image becomes the model input: resize, crop, (x - mean) / std, in the
    model's layout (the pixels travel as NCHW whatever it is; ``normalize`` lays them out)."""

    channels: str = Field("RGB", pattern="^(RGB|BGR|L)$")  # the order the model takes
    resize: int | None = None  # shorter side, before the centre crop
    size: tuple[int, int]  # (height, width) fed to the model
    mean: list[float]  # per channel, in 0..255 pixel units
    std: list[float]
    layout: Literal["NCHW", "NHWC"] = "NCHW"


class DetectSpec(Frozen):
    """How a detector's outputs become boxes (``[output.detect]``): CenterNet-style heads
    at ``stride`` pixels per cell, a ``heatmap`` of centre scores per class (after its
    sigmoid), the box ``size`` and the centre's sub-cell ``offset``; then greedy NMS."""

    decoder: Literal["centernet"] = "centernet"
    heatmap: str
    size: str
    offset: str
    stride: int = Field(gt=0, le=1024)
    size_encoding: Literal["linear", "log"] = "linear"  # log: size = exp(value) * stride
    order: Literal["xy", "yx"] = "xy"  # the channel order of size and offset
    score: float = Field(0.5, gt=0, lt=1)  # the least centre score that makes a box
    iou: float = Field(0.5, gt=0, le=1)  # NMS drops a box overlapping a better one more
    max_boxes: int = Field(100, gt=0, le=1000)

    @property
    def tensors(self) -> list[str]:
        return [self.heatmap, self.size, self.offset]


class OutputSpec(Frozen):
    """How the model's output is read: ``task``, and ``tensor``, the output that answers
    (None: the last; the outputs before it are exit heads); a ``raw`` task may name
    several, a ``detect`` task names its tensors in ``detect``."""

    task: Literal["classify", "detect", "raw"] = "classify"
    tensor: str | list[str] | None = None
    detect: DetectSpec | None = None

    @property
    def tensors(self) -> list[str] | None:
        """The outputs that answer together (None: the model's last output)."""
        if self.detect is not None:
            return self.detect.tensors
        if self.tensor is None:
            return None
        return [self.tensor] if isinstance(self.tensor, str) else list(self.tensor)

    def answering(self, outputs: list[TensorSpec]) -> tuple[list[str], list[str]]:
        """(exit heads, finals) of a model whose outputs are ``outputs``: the finals answer
        together (a detector's heads, a raw task's tensors, the one ``tensor``, else the
        last output); only a classifier that names no tensor has exit heads, the outputs
        before its last."""
        names = [o.name for o in outputs]
        if self.tensors:
            return [], self.tensors
        if self.task == "raw":
            return [], names
        return names[:-1], names[-1:]


class Quality(Frozen):
    """How good one member of a model family is, measured on the same samples as every
    other member (``splitmq family measure``): its unsplit answers' agreement with the
    family's ``reference`` member (the most accurate), and its accuracy where the samples
    are labelled."""

    reference: str  # the member the others are held against (itself: agreement 1)
    agreement: float = Field(ge=0, le=1)
    accuracy: float | None = Field(None, ge=0, le=1)
    samples: int = Field(gt=0)
    data: str  # which samples


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
    output: OutputSpec = Field(default_factory=OutputSpec)
    labels: str | None = None  # file name beside the manifest, one label per line
    cuts: list[Cut]
    profiles: list[Profile] = Field(default_factory=list)
    calibration: CalibrationTable | None = None
    exits: ExitReport | None = None  # exits measured on labelled data (multi-exit models)
    family: str | None = None  # the model family it is a member of (``pool add --family``)
    quality: Quality | None = None  # measured against the family's reference member

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

    @field_validator("calibration", mode="before")
    @classmethod
    def _drop_stale_calibration(cls, value: Any) -> Any:
        """A calibration from an older splitmq is dropped (re-run `splitmq calibrate`)."""
        if value is None or value == {}:
            return None
        try:
            return CalibrationTable.model_validate(value)
        except ValidationError:
            log.warning("dropping a stale calibration (re-run `splitmq calibrate` to replace it)")
            return None

    def profile_for(self, host: HostInfo, provider: str = "cpu") -> Profile | None:
        """The profile measured on ``host`` with the execution provider ``provider``."""
        return next((p for p in self.profiles if (p.host, p.provider) == (host, provider)), None)
