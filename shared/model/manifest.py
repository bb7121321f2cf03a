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


class OutputSpec(Frozen):
    """How the model's output is read: ``task``, and ``tensor``, the output that answers
    (None: the last; the outputs before it are exit heads)."""

    task: Literal["classify", "detect", "raw"] = "classify"
    tensor: str | None = None


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

    def profile_for(self, host: HostInfo) -> Profile | None:
        return next((p for p in self.profiles if p.host == host), None)
