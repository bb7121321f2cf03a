"""A model's config: what the ONNX graph alone does not say (a TOML file).

Like Triton's ``config.pbtxt``, one small file beside the model says how an image
becomes its input (layout, colour order, resize, crop, mean and std) and how its output
is read (the task, which output answers, the labels)::

    [input]
    layout = "NCHW"          # or "NHWC"
    color = "RGB"            # "BGR", "GRAY"
    resize = 256             # shorter side, optional
    crop = 224               # or [h, w]
    mean = [127.0, 127.0, 127.0]
    std = [128.0, 128.0, 128.0]
    [output]
    task = "classify"        # "detect", "raw"
    tensor = "probs"         # which output, when there are several (raw: a list)
    labels = "labels.txt"    # relative to the config

A detector says how its outputs become boxes (``DetectSpec``: CenterNet-style heads,
then NMS), decoded on the tier that computes them::

    [output.detect]
    decoder = "centernet"
    heatmap = "heatmap"      # [1, classes, H, W] centre scores (after the sigmoid)
    size = "scale"           # [1, 2, H, W] box height and width
    offset = "offset"        # [1, 2, H, W] the centre within its cell
    stride = 4               # input pixels per cell
    size_encoding = "log"    # or "linear"
    order = "yx"             # or "xy": the channel order of size and offset
    score = 0.5              # the least centre score
    iou = 0.3                # NMS overlap

``splitmq pool add --config`` reads it (its flags override single fields); :meth:`check`
holds it against the graph, so a config that cannot work fails at ``pool add`` with one
line naming the field, never per request. The pool keeps it in the manifest and writes
it back as ``config.toml`` beside ``model.onnx``; the built-in models are described the
same way.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from splitmq.shared.errors import UserError
from splitmq.shared.model.manifest import DetectSpec, OutputSpec, Preprocess, TensorSpec
from splitmq.shared.protocol.results import MAX_RAW, RAW_DTYPES

LAYOUTS = ("NCHW", "NHWC")
#: The config's colour names -> the manifest's (Pillow's mode for grey is "L").
COLORS = {"RGB": "RGB", "BGR": "BGR", "GRAY": "L"}
TASKS = ("classify", "detect", "raw")
MAX_SIDE = 8192  # pixels: a resize or crop side (a 24 MP camera's long side is 6,000)
SECTIONS = {
    "input": {"layout", "color", "resize", "crop", "mean", "std"},
    "output": {"task", "tensor", "labels", "detect"},
}


class ConfigError(UserError):
    """A model config that cannot work: one line, naming the file and the field."""


@dataclass(frozen=True)
class ModelConfig:
    """A parsed config: the manifest's preprocessing and output, and the labels."""

    preprocess: Preprocess | None
    output: OutputSpec
    labels: list[str] | None

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, dict[str, Any]]) -> ModelConfig:
        """The config in ``path`` (None: none) with ``overrides`` (section -> field ->
        value, from flags) on top; labels are read relative to the file."""
        doc: dict[str, Any] = {}
        where = "the flags"
        if path is not None:
            where = str(path)
            try:
                doc = tomllib.loads(Path(path).read_text())
            except OSError as exc:
                raise ConfigError(f"model config {path}: cannot be read ({exc.strerror})") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"model config {path}: not TOML ({exc})") from None
        for section, fields in overrides.items():
            given = {k: v for k, v in fields.items() if v is not None}
            if given and not isinstance(doc.setdefault(section, {}), dict):
                raise ConfigError(f"{where}: [{section}] must be a table, got {doc[section]!r}")
            if given:
                doc[section].update(given)
        base = Path(path).parent if path is not None else Path.cwd()
        return cls.parse(doc, base, where)

    @classmethod
    def parse(cls, doc: dict[str, Any], base: Path, where: str) -> ModelConfig:
        for section, value in doc.items():
            if section not in SECTIONS:
                raise ConfigError(f"{where}: unknown section [{section}]: use [input], [output]")
            unknown = set(value) - SECTIONS[section] if isinstance(value, dict) else set()
            if not isinstance(value, dict) or unknown:
                what = f"unknown field {section}.{sorted(unknown)[0]}" if unknown else "a table"
                known = ", ".join(sorted(SECTIONS[section]))
                raise ConfigError(f"{where}: [{section}] must hold {known}; found {what}")
        field = _Fields(where)
        out = doc.get("output", {})
        task = field.choice("output.task", out.get("task", "classify"), TASKS)
        tensor = field.tensor(task, out.get("tensor"))
        detect = field.detect(task, out.get("detect"))
        labels = None
        if out.get("labels") is not None:
            if not isinstance(out["labels"], str):
                got = out["labels"]
                raise ConfigError(f"{where}: output.labels must be a file name, got {got!r}")
            labels = field.labels("output.labels", base / out["labels"])
        pre = None
        if "input" in doc:
            pre = field.preprocess(doc["input"])
        return cls(pre, OutputSpec(task=task, tensor=tensor, detect=detect), labels)

    def check(self, name: str, model_input: TensorSpec, outputs: list[TensorSpec]) -> None:
        """Hold the config against the model's graph; ConfigError naming the field."""
        final, classes = check_output(name, self.output, outputs)
        if self.labels is not None and classes is None:
            raise ConfigError(
                f"the config of {name}: output.labels names classes, but a raw task has none"
            )
        if self.labels is not None and len(self.labels) != classes:
            raise ConfigError(
                f"the config of {name}: output.labels has {len(self.labels)} labels for the "
                f"{classes} classes of output {final!r}"
            )
        if self.preprocess is not None:
            _check_input(f"the config of {name}", self.preprocess, model_input)


def check_output(
    name: str, output: OutputSpec, outputs: list[TensorSpec]
) -> tuple[str, int | None]:
    """Whether the model's outputs can answer as ``output`` says (any model added to the
    pool, with a config or not); returns the answering output and its number of classes
    (None for a raw task). A classifier needs one vector of class scores, a detector
    heads of one grid, and every answering output starts with the batch dim."""
    where = f"model {name}"
    by_name = {o.name: o for o in outputs}
    field = "output.detect" if output.detect is not None else "output.tensor"
    chosen = output.tensors or ([outputs[-1].name] if output.task != "raw" else list(by_name))
    for tensor in chosen:
        if tensor not in by_name:
            raise ConfigError(
                f"{where}: {field} names {tensor!r}, which is not an output of the model: it "
                f"has {', '.join(by_name)}"
            )
        spec = by_name[tensor]
        if not spec.shape or spec.shape[0] != 1:
            raise ConfigError(
                f"{where}: output {spec.name!r} of shape {spec.shape} does not start with the "
                "batch dim: export the model with the batch first"
            )
    if output.task == "raw":
        _check_raw(where, [by_name[t] for t in chosen])
        return chosen[0], None
    if output.detect is not None:
        return chosen[0], _check_heads(where, output.detect, by_name)
    final = by_name[chosen[0]]
    classes = [d for d in final.shape[1:] if d != 1]
    if len(classes) != 1:
        raise ConfigError(
            f"{where}: output {final.name!r} of shape {final.shape} holds no vector of class "
            "scores (one dimension besides the batch may exceed 1): name the output that "
            "does with output.tensor"
        )
    return final.name, int(classes[0])


def _check_raw(where: str, tensors: list[TensorSpec]) -> None:
    """A raw answer carries at most ``MAX_RAW`` tensors of the dtypes a result holds."""
    if len(tensors) > MAX_RAW:
        raise ConfigError(
            f"{where}: a raw answer carries at most {MAX_RAW} outputs, the model has "
            f"{len(tensors)}: name the ones to answer with in output.tensor"
        )
    for spec in tensors:
        if spec.dtype not in (*RAW_DTYPES, "float64"):
            raise ConfigError(
                f"{where}: output {spec.name!r} is {spec.dtype}; a raw answer carries "
                f"{', '.join(RAW_DTYPES)}"
            )


def _check_heads(where: str, detect: DetectSpec, by_name: dict[str, TensorSpec]) -> int:
    """A CenterNet detector's heads: [1, classes, H, W] scores, [1, 2, H, W] size and
    offset on the same grid; returns the number of classes."""
    heatmap = by_name[detect.heatmap].shape
    if len(heatmap) != 4:
        raise ConfigError(
            f"{where}: output.detect.heatmap {detect.heatmap!r} is {heatmap}, not "
            "[batch, classes, height, width]"
        )
    for field in ("size", "offset"):
        shape = by_name[getattr(detect, field)].shape
        if shape != [1, 2, *heatmap[2:]]:
            raise ConfigError(
                f"{where}: output.detect.{field} {getattr(detect, field)!r} is {shape}; the "
                f"decoder needs [1, 2, {heatmap[2]}, {heatmap[3]}], the heatmap's grid"
            )
    return heatmap[1]


def _check_input(where: str, pre: Preprocess, spec: TensorSpec) -> None:
    dims = spec.shape
    if spec.dtype != "float32":
        raise ConfigError(
            f"{where}: [input] makes float32 images, but input {spec.name!r} takes "
            f"{spec.dtype}: leave [input] out and send {spec.dtype} arrays"
        )
    if len(dims) != 4:
        raise ConfigError(
            f"{where}: [input] describes images, but input {spec.name!r} is {dims} (not 4-D)"
        )
    c, h, w = (dims[1], dims[2], dims[3]) if pre.layout == "NCHW" else (dims[3], dims[1], dims[2])
    if c != len(pre.mean):
        raise ConfigError(
            f"{where}: input.layout = {pre.layout!r} reads {c} channel(s) from input "
            f"{spec.shape}, but input.color = {_color(pre)!r} has {len(pre.mean)}: check "
            "input.layout and input.color"
        )
    if (h, w) != tuple(pre.size):
        raise ConfigError(
            f"{where}: input.crop is {list(pre.size)} but the model's input "
            f"({pre.layout} {spec.shape}) takes {h}x{w}"
        )


def _color(pre: Preprocess) -> str:
    return next(k for k, v in COLORS.items() if v == pre.channels)


class _Fields:
    """Reads one field at a time, so each error names its field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, why: str) -> ConfigError:
        return ConfigError(f"{self.where}: {field} {why}")

    def choice(self, field: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(field, f"must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    def positive_int(self, field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIDE:
            raise self.fail(field, f"must be a number of pixels, 1..{MAX_SIDE}, got {value!r}")
        return value

    def numbers(self, field: str, value: Any, count: int, positive: bool = False) -> list[float]:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise self.fail(field, f"must be numbers, got {value!r}")
        floats = [float(v) for v in values] * (count if len(values) == 1 else 1)
        if len(floats) != count or not all(math.isfinite(v) for v in floats):
            raise self.fail(field, f"needs {count} finite number(s), one per channel: {value!r}")
        if positive and min(floats) <= 0:
            raise self.fail(field, f"must be above 0, got {value!r}")
        return floats

    def preprocess(self, section: dict[str, Any]) -> Preprocess:
        for needed in ("crop", "mean", "std"):
            if needed not in section:
                raise self.fail(f"input.{needed}", "is missing: [input] needs crop, mean and std")
        layout = self.choice("input.layout", section.get("layout", "NCHW"), LAYOUTS)
        color = self.choice("input.color", section.get("color", "RGB"), tuple(COLORS))
        crop = section["crop"]
        if isinstance(crop, list):
            if len(crop) != 2:
                raise self.fail("input.crop", f"must be a size or [height, width], got {crop!r}")
            h, w = (self.positive_int("input.crop", side) for side in crop)
            size = (h, w)
        else:
            size = (self.positive_int("input.crop", crop),) * 2
        resize = section.get("resize")
        if resize is not None:
            resize = self.positive_int("input.resize", resize)
            if resize < min(size):
                raise self.fail("input.resize", f"({resize}) is smaller than the crop {list(size)}")
        channels = 1 if color == "GRAY" else 3
        return Preprocess(
            layout=layout,
            channels=COLORS[color],
            resize=resize,
            size=size,
            mean=self.numbers("input.mean", section["mean"], channels),
            std=self.numbers("input.std", section["std"], channels, positive=True),
        )

    def tensor(self, task: str, value: Any) -> str | list[str] | None:
        """``output.tensor``: one output's name; a raw task may name several."""
        several = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        if value is None or isinstance(value, str):
            return value
        if task == "raw" and several:
            return list(value)
        what = "an output's name or a list of them" if task == "raw" else "an output's name"
        raise self.fail("output.tensor", f"must be {what}, got {value!r}")

    def detect(self, task: str, value: Any) -> DetectSpec | None:
        """``[output.detect]``: how a detect task decodes boxes (and only a detect task)."""
        if value is None:
            if task == "detect":
                raise self.fail(
                    "output.detect", "is missing: a detect task declares its decoder there"
                )
            return None
        if task != "detect":
            raise self.fail("output.detect", f'is for task = "detect", not {task!r}')
        if not isinstance(value, dict):
            raise self.fail("output.detect", f"must be a table, got {value!r}")
        try:
            return DetectSpec.model_validate(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(part) for part in error["loc"])
            got = f", got {error['input']!r}" if error["type"] != "missing" else ""
            raise self.fail(f"output.detect.{name}", f"{error['msg'].lower()}{got}") from None

    def labels(self, field: str, path: Path) -> list[str]:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(field, f"{path} cannot be read ({exc})") from None
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise self.fail(field, f"{path} holds no labels (one per line)")
        return lines


def render(pre: Preprocess | None, output: OutputSpec, labels: str | None) -> str:
    """The config as TOML, as ``pool add`` keeps it beside the model (``pool show``)."""
    lines: list[str] = []
    if pre is not None:
        crop = pre.size[0] if pre.size[0] == pre.size[1] else list(pre.size)
        lines += [
            "[input]",
            f'layout = "{pre.layout}"',
            f'color = "{_color(pre)}"',
            *([f"resize = {pre.resize}"] if pre.resize else []),
            f"crop = {crop}",
            f"mean = {pre.mean}",
            f"std = {pre.std}",
            "",
        ]
    lines += ["[output]", f'task = "{output.task}"']
    if output.tensor is not None:
        lines.append(f"tensor = {json.dumps(output.tensor)}")  # TOML basic strings
    if labels is not None:
        lines.append(f"labels = {json.dumps(labels)}")
    if output.detect is not None:
        lines += ["", "[output.detect]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in output.detect.model_dump().items()]
    return "\n".join(lines) + "\n"
