"""Tiny real architectures built in memory with onnx.helper, for the graph logic tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from copy import deepcopy as copy
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitmq.shared.model.graph import checked
from splitmq.shared.model.pool import ModelPool

RNG = np.random.default_rng(7)
C = 4  # channels everywhere: small, but enough to catch layout mistakes


class Builder:
    """Appends nodes to a graph with input x: [N, C, 8, 8] float32."""

    def __init__(self, name: str, constants_as_nodes: bool = False) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.constants_as_nodes = constants_as_nodes
        self.count = 0

    def _fresh(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, value: np.ndarray) -> str:
        name = self._fresh("w")
        if self.constants_as_nodes:
            self.nodes.append(
                helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
            )
        else:
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self._fresh(op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int = C, cout: int = C, k: int = 3, group: int = 1) -> str:
        w = self.const(RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.3)
        b = self.const(RNG.standard_normal(cout).astype(np.float32) * 0.1)
        return self.op("Conv", [x, w, b], pads=[k // 2] * 4, group=group)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def head(self, x: str, classes: int = 3, cin: int = C) -> str:
        """GlobalAveragePool -> Flatten -> Gemm: the usual classifier."""
        pooled = self.op("GlobalAveragePool", [x])
        flat = self.op("Flatten", [pooled], axis=1)
        w = self.const(RNG.standard_normal((classes, cin)).astype(np.float32))
        b = self.const(np.zeros(classes, np.float32))
        return self.op("Gemm", [flat, w, b], transB=1)

    def model(
        self,
        outputs: list[str],
        shuffle: bool = False,
        inits_as_inputs: bool = False,
        ir_version: int = 8,
        opset: int = 17,
    ) -> onnx.ModelProto:
        nodes = list(self.nodes)
        if shuffle:
            random.Random(3).shuffle(nodes)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 8, 8])]
        if inits_as_inputs:  # how IR < 4 models list their weights
            inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits
            ]
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", "K"]) for o in outputs]
        graph = helper.make_graph(nodes, self.name, inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir_version
        return checked(copy(model)) and model  # valid once sorted; returned as built


def chain() -> onnx.ModelProto:
    g = Builder("chain")
    x = g.relu(g.conv("x"))
    x = g.relu(g.conv(x))
    return g.model([g.head(x)])


def residual(shuffle: bool = False, constants_as_nodes: bool = False) -> onnx.ModelProto:
    """Two ResNet-style blocks: inside a block nothing is a cut, between blocks it is."""
    g = Builder("residual", constants_as_nodes)
    x = g.relu(g.conv("x"))
    for _ in range(2):
        y = g.relu(g.conv(x))
        y = g.conv(y)
        x = g.relu(g.add(x, y))
    return g.model([g.head(x)], shuffle=shuffle)


def inverted_residual() -> onnx.ModelProto:
    """MobileNetV2/EfficientNet block: expand 1x1, depthwise 3x3, project 1x1, add."""
    g = Builder("inverted_residual")
    x = g.conv("x")
    y = g.relu(g.conv(x, C, 2 * C, k=1))
    y = g.relu(g.conv(y, 2 * C, 2 * C, k=3, group=2 * C))
    y = g.conv(y, 2 * C, C, k=1)
    x = g.add(x, y)
    return g.model([g.head(x)])


def inception() -> onnx.ModelProto:
    """Parallel branches joined by Concat: only the join and beyond are cuts."""
    g = Builder("inception")
    x = g.relu(g.conv("x"))
    a = g.conv(x, k=1)
    b = g.conv(g.conv(x, k=1), k=3)
    c = g.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    cat = g.op("Concat", [a, b, c], axis=1)
    y = g.relu(g.conv(cat, 3 * C, C, k=1))
    return g.model([g.head(y)])


def densenet() -> onnx.ModelProto:
    """Dense block: every layer reads the concat of all earlier ones."""
    g = Builder("densenet")
    x = g.conv("x")
    feats = [x]
    for _ in range(3):
        cat = g.op("Concat", feats, axis=1) if len(feats) > 1 else feats[0]
        feats.append(g.relu(g.conv(cat, C * len(feats), C)))
    out = g.op("Concat", feats, axis=1)
    return g.model([g.head(out, cin=4 * C)])


def early_exit() -> onnx.ModelProto:
    """A first exit head after block 1; the final head at the end (the last output)."""
    g = Builder("early_exit")
    x = g.relu(g.conv("x"))
    x = g.relu(g.conv(x))
    exit1 = g.head(x)
    x = g.relu(g.conv(x))
    x = g.relu(g.conv(x))
    return g.model([exit1, g.head(x)])


def batch_reshape() -> onnx.ModelProto:
    """`x.view(x.size(0), -1)` as torch exports it: Shape of the *input* feeds a Reshape."""
    g = Builder("batch_reshape")
    x = g.relu(g.conv("x"))
    shape = g.op("Shape", ["x"])
    batch = g.op("Gather", [shape, g.const(np.array(0, np.int64))], axis=0)
    dims = g.op("Unsqueeze", [batch, g.const(np.array([0], np.int64))])
    target = g.op("Concat", [dims, g.const(np.array([-1], np.int64))], axis=0)
    pooled = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    flat = g.op("Reshape", [pooled, target])
    w = g.const(RNG.standard_normal((3, C * 16)).astype(np.float32))
    return g.model([g.op("Gemm", [flat, w], transB=1)])


def old_style_inputs() -> onnx.ModelProto:
    """Weights listed among the graph inputs too, as old exporters did, but in an IR 8 file."""
    g = Builder("old_style")
    x = g.relu(g.conv(g.relu(g.conv("x"))))
    model = g.model([g.head(x)], inits_as_inputs=True)
    return model


# (IR version, the newest opset of the first ONNX release with it; for IR 3 its last: 8).
CLASSIC_IR_OPSETS = [(3, 8), (4, 9), (5, 10), (6, 11), (7, 12), (8, 15), (9, 19), (10, 21)]


def classic(ir_version: int = 3, opset: int = 8) -> onnx.ModelProto:
    """A model-zoo-era ResNet: weights as graph inputs (IR 3 requires it), residual blocks,
    and the head's `x.view(x.size(0), -1)` whose Shape a later partition must rebuild."""
    g = Builder(f"classic_ir{ir_version}")
    x = g.relu(g.conv("x"))
    for _ in range(2):
        y = g.conv(g.relu(g.conv(x)))
        x = g.relu(g.add(x, y))
    pooled = g.op("GlobalAveragePool", [x])
    batch = g.op("Gather", [g.op("Shape", [x]), g.const(np.array(0, np.int64))], axis=0)
    if opset < 13:
        batch = g.op("Unsqueeze", [batch], axes=[0])
    else:
        batch = g.op("Unsqueeze", [batch, g.const(np.array([0], np.int64))])
    target = g.op("Concat", [batch, g.const(np.array([-1], np.int64))], axis=0)
    flat = g.op("Reshape", [pooled, target])
    w = g.const(RNG.standard_normal((3, C)).astype(np.float32))
    logits = g.op("Gemm", [flat, w, g.const(np.zeros(3, np.float32))], transB=1)
    return g.model([logits], inits_as_inputs=True, ir_version=ir_version, opset=opset)


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "chain": chain,
    "residual": residual,
    "residual_shuffled": lambda: residual(shuffle=True),
    "residual_constant_nodes": lambda: residual(constants_as_nodes=True),
    "inverted_residual": inverted_residual,
    "inception": inception,
    "densenet": densenet,
    "early_exit": early_exit,
    "batch_reshape": batch_reshape,
    "old_style_inputs": old_style_inputs,
    "classic_ir3": classic,
}


def pool_of(
    root: Path, models: Mapping[str, onnx.ModelProto], labels: list[str] | None = None
) -> ModelPool:
    """A pool under ``root`` holding ``models`` (pool name -> graph), each added from a
    saved file as ``splitmq pool add`` does."""
    pool = ModelPool(root / "pool")
    for name, model in models.items():
        path = root / f"{name}.onnx"
        onnx.save(model, path)
        pool.add(path, name, labels=labels)
    return pool
