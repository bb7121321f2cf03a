"""The Models view's server side: the pool's models, their cuts, and uploads into the pool.

A model's cuts are its manifest's cut table, the rows ``splitmq inspect --json``
prints (``Cut.to_json``). An upload goes through ``ModelPool.add``, as ``splitmq
pool add`` does, so the same checks apply (a valid name, a real ONNX model with
one input); on top, its size is bounded, and an image model may be given its
preprocessing (mean and std per channel; size and channels come from the input)
and its labels, so images can be run through it at once. Or a model config (the
TOML of ``splitmq pool add --config``) says all of it, and the task: a detector's
decoding, a raw task's outputs; the labels file it names is the one uploaded.
"""

from __future__ import annotations

import math
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from splitmq.dashboard.forms import Form
from splitmq.shared.codecs import CODECS, INPUT_CODECS, STAGES
from splitmq.shared.errors import ModelError, PoolError, UserError
from splitmq.shared.model.config import ConfigError, ModelConfig
from splitmq.shared.model.graph import Graph, load_model
from splitmq.shared.model.manifest import Preprocess
from splitmq.shared.model.pool import ModelPool, ModelVersion, check_name, parse_ref

MAX_LABELS = 100_000
MAX_LABEL = 256  # characters: what a result's label may hold
#: What the page offers at a cut holding a feature map (jpeg:Q and u8 carry the input).
FEATURE_CODECS = [
    f"{base}{stage}"
    for base in CODECS
    if base not in INPUT_CODECS
    for stage in ("", *(f"+{s}" for s in STAGES))
]
#: What the page offers at cut 0 of a model with image preprocessing, besides those.
INPUT_CHOICES = ["u8", "u8+zstd", "jpeg:90", "jpeg:75", "jpeg:50"]


class NotInPool(PoolError):
    """A model or version the pool does not hold: the page asked for what is not there."""


def find(pool: ModelPool, ref: str) -> ModelVersion:
    """The model version ``ref`` (``NAME`` or ``NAME@VERSION``) names; PoolError for a bad
    name, NotInPool for one the pool lacks."""
    name, version = parse_ref(ref)
    versions = pool.versions(name)
    if not versions or (version is not None and version not in versions):
        try:
            pool.get(name, version)
        except PoolError as exc:  # its message lists what the pool does hold
            raise NotInPool(str(exc)) from None
    return pool.get(name, version)


def model_row(mv: ModelVersion) -> dict[str, Any]:
    m = mv.manifest
    return {
        "name": m.name,
        "version": m.version,
        "ref": f"{m.name}@{m.version}",
        "cuts": len(m.cuts),
        "bytes": m.size,
        "source": m.source,
        "task": m.output.task,
        "images": m.preprocess is not None,
        "labels": m.labels is not None,
        "profiled": bool(m.profiles),
        "calibrated": m.calibration is not None,
    }


class ModelDesk:
    """The pool as the page sees it: list, detail, upload."""

    def __init__(self, pool: ModelPool, max_upload: int) -> None:
        self.pool = pool
        self.max_upload = max_upload

    def listing(self) -> dict[str, Any]:
        rows = [
            model_row(self.pool.get(name, v))
            for name in self.pool.names()
            for v in self.pool.versions(name)
        ]
        return {"pool": str(self.pool.root), "max_upload": self.max_upload, "models": rows}

    def detail(self, ref: str) -> dict[str, Any]:
        """The model's cut table, and what the page may offer to run at each cut."""
        mv = find(self.pool, ref)
        m = mv.manifest
        table = m.calibration
        return {
            **model_row(mv),
            "input": m.input.model_dump(),
            "outputs": [o.model_dump() for o in m.outputs],
            "preprocess": None if m.preprocess is None else m.preprocess.model_dump(),
            "cuts": [c.to_json() for c in mv.cuts],
            "codecs": FEATURE_CODECS,
            "input_codecs": INPUT_CHOICES if m.preprocess is not None else [],
            "fidelity": [] if table is None else [row.to_json() for row in table.fidelity],
        }

    def upload(self, form: Form) -> dict[str, Any]:
        """Add the posted model; the same file under the same name is the same version."""
        name = check_name(form.text("name"))
        model = form.file("model", "an .onnx model file")
        filename = model.filename or "the upload"
        labels = _labels(form)
        mean, std = form.text_or_none("mean"), form.text_or_none("std")
        config = form.file_or_none("config")
        if config is not None and (mean is not None or std is not None):
            raise UserError("the config says how images become the input: leave mean and std empty")
        before = set(self.pool.versions(name))
        with tempfile.TemporaryDirectory(prefix="splitmq-upload-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model.data)
            try:
                proto = load_model(path)
                if config is not None:
                    cfg = model_config(config.data, config.filename or "the config", labels, tmp)
                    mv = self.pool.add(
                        path, name, config=cfg, source=f"dashboard upload: {filename}"
                    )
                else:
                    mv = self.pool.add(
                        path,
                        name,
                        preprocess=image_preprocess(Graph(proto), mean, std),
                        labels=labels,
                        source=f"dashboard upload: {filename}",
                    )
            except ModelError as exc:  # name the user's file, not the temporary copy
                raise ModelError(str(exc).replace(str(path), filename)) from None
        return {**model_row(mv), "new": mv.version not in before}


def model_config(data: bytes, where: str, labels: list[str] | None, tmp: str) -> ModelConfig:
    """An uploaded config, read as ``splitmq pool add --config`` reads one; ConfigError,
    one line naming the file and the field, for anything wrong. The labels it names are
    the uploaded labels file (copied into ``tmp``), never a path on this server."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model config {where}: not TOML ({exc})") from None
    output = doc.get("output")
    named = output.get("labels") if isinstance(output, dict) else None
    if named is not None and labels is None:
        raise ConfigError(
            f"{where}: output.labels names {named!r}: choose that file as the labels too"
        )
    if labels is not None and (output is None or isinstance(output, dict)):
        (Path(tmp) / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        doc.setdefault("output", {})["labels"] = "labels.txt"
    return ModelConfig.parse(doc, Path(tmp), where)


def image_preprocess(graph: Graph, mean: str | None, std: str | None) -> Preprocess | None:
    """How images become this model's input: mean and std given (pixel units, 0..255);
    channels and size from an input of shape [N, 1 or 3, H, W]. None: no images."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise UserError("give both the mean and the std (pixel units, 0..255), or neither")
    dims = graph.input_shape()
    if len(dims) != 4 or dims[1] not in (1, 3) or not all(isinstance(d, int) for d in dims[2:]):
        raise UserError(
            f"the model's input {graph.input_name!r} is {dims}: images need [N, 1 or 3, H, W] "
            "(leave mean and std empty for other models)"
        )
    channels = int(dims[1])
    return Preprocess(
        channels="L" if channels == 1 else "RGB",
        resize=None,
        size=(int(dims[2]), int(dims[3])),
        mean=_per_channel("mean", mean, channels),
        std=_per_channel("std", std, channels, positive=True),
    )


def _per_channel(what: str, text: str, channels: int, positive: bool = False) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} {text!r}: give numbers like 127 or 123.7, 116.3, 103.5") from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise UserError(
            f"{what}: the input has {channels} channel(s): give one number per channel, "
            f"or one for all, got {text!r}"
        )
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise UserError(
            f"{what} {text!r}: every value must be a finite number"
            + (" above 0" if positive else "")
        )
    return values


def _labels(form: Form) -> list[str] | None:
    """The labels file: UTF-8 text, one class name per line."""
    field = form.file_or_none("labels")
    if field is None:
        return None
    try:
        lines = field.data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{field.filename or 'the labels file'} is not UTF-8 text") from None
    if len(lines) > MAX_LABELS:
        raise UserError(f"the labels file has {len(lines)} lines; at most {MAX_LABELS}")
    long = next((i for i, line in enumerate(lines, 1) if len(line) > MAX_LABEL), None)
    if long is not None:
        raise UserError(f"line {long} of the labels file is over {MAX_LABEL} characters")
    return [line.strip() for line in lines]
