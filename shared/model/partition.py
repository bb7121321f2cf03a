"""Extracting the segment of a model between two cuts as a standalone ONNX model.

Segment (a, b) computes cut b's tensor from cut a's tensor (a = 0: the model
input; b = None: to the model's outputs). Every model output computed on the
way — an early-exit head — is an output of the segment able to compute it.
Constants are copied to every segment that needs them; a shape read of a
tensor that lives upstream is rebuilt from this segment's own input, whose
batch dim is the same, and the statically known remaining dims. Its inputs
and outputs keep the model's batch dim, symbolic or fixed. A segment
keeps the model's IR version and opsets; under IR 3 its weights are listed
as graph inputs after the cut tensor, as that IR requires.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from splitmq.shared.errors import ModelError
from splitmq.shared.model.cuts import Cut
from splitmq.shared.model.graph import SHAPE_OPS, Graph, declare_initializers

DTYPE_TO_ONNX = {
    "float32": onnx.TensorProto.FLOAT,
    "float16": onnx.TensorProto.FLOAT16,
    "float64": onnx.TensorProto.DOUBLE,
    "uint8": onnx.TensorProto.UINT8,
    "int8": onnx.TensorProto.INT8,
    "int32": onnx.TensorProto.INT32,
    "int64": onnx.TensorProto.INT64,
    "bool": onnx.TensorProto.BOOL,
}


def segment_outputs(graph: Graph, cuts: list[Cut], a: int, b: int | None) -> list[str]:
    """Outputs of segment (a, b): cut b's tensor, then the model outputs it computes.

    A model output belongs to the first segment after which it can be
    computed: an early-exit head reading cut b's tensor is computed by the
    segment that ends at b, so the hop there can decide to answer early.
    """
    last = len(cuts) - 1
    if b is not None and b >= last:
        b = None
    mine = [
        o
        for o in graph.output_names
        if available_at(graph, cuts, o, b) and not available_at(graph, cuts, o, a)
    ]
    return mine if b is None else [cuts[b].name, *mine]


def available_at(graph: Graph, cuts: list[Cut], output: str, cut: int | None) -> bool:
    """Whether ``output`` can be computed from what exists once the model ran up to ``cut``."""
    if cut is None or cut >= len(cuts) - 1:
        return True
    trunk = set(graph.finals)
    for final in graph.finals:
        trunk |= upstream_of(graph, final)
    trunk &= downstream_of(graph, cuts[cut].name)
    return not (upstream_of(graph, output) | {output}) & trunk


def exit_cut(graph: Graph, cuts: list[Cut], output: str) -> int:
    """The cut after which ``output`` can first be computed: the segment a -> b computes
    it (so a hop running it may answer from it) exactly when a < this cut <= b."""
    return next(k for k in range(len(cuts)) if available_at(graph, cuts, output, k))


def extract_segment(graph: Graph, cuts: list[Cut], a: int, b: int | None) -> onnx.ModelProto:
    """Standalone model for cuts a → b (see module docstring); passes onnx.checker."""
    _check_cut_range(cuts, a, b)
    source = cuts[a].name
    outputs = segment_outputs(graph, cuts, a, b)
    available = {source}
    needed = _backward(graph, outputs, stop=available)
    nodes: list[onnx.NodeProto] = []
    extra_inits: list[onnx.TensorProto] = []
    for i in sorted(needed):
        node = graph.nodes[i]
        if (
            node.op_type in SHAPE_OPS
            and node.input[0] not in available
            and not _computed(graph, node.input[0], needed)
        ):
            new_nodes, inits = _rebuild_shape(graph, node, source)
            nodes.extend(new_nodes)
            extra_inits.extend(inits)
        else:
            nodes.append(node)
    used = {t for n in nodes for t in n.input}
    inits = [t for t in graph.model.graph.initializer if t.name in used] + extra_inits
    produced = {o for n in nodes for o in n.output}
    dangling = sorted(
        t
        for t in used
        if t and t not in produced and t not in available and t not in {i.name for i in inits}
    )
    if dangling:
        raise ModelError(f"segment {a}->{b} needs tensor {dangling[0]!r} from outside the cut")
    seg = helper.make_graph(
        nodes,
        f"{graph.model.graph.name or 'model'}_{a}_{'end' if b is None else b}",
        inputs=[_value_info(graph, source)],
        outputs=[_value_info(graph, o) for o in outputs],
        initializer=inits,
    )
    model = helper.make_model(
        seg, opset_imports=list(graph.model.opset_import), producer_name="splitmq"
    )
    model.ir_version = graph.model.ir_version  # kept: the opsets may predate a newer IR
    declare_initializers(model)  # IR < 4: weights are graph inputs too, after the cut tensor
    onnx.checker.check_model(model)
    return model


def _check_cut_range(cuts: list[Cut], a: int, b: int | None) -> None:
    last = len(cuts) - 1
    if not 0 <= a < last:
        raise ModelError(f"cut {a} cannot start a segment: valid cuts are 0..{last - 1}")
    if b is not None and not a < b <= last:
        raise ModelError(f"cut {b} cannot end a segment starting at {a}: valid are {a + 1}..{last}")


def downstream_of(graph: Graph, tensor: str) -> set[str]:
    """Every tensor whose value depends on ``tensor`` (shape reads excluded)."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        for ci in graph.consumers.get(t, []):
            node = graph.nodes[ci]
            if t in graph.dynamic_inputs(node):
                fresh = [o for o in node.output if o and o not in seen]
                seen.update(fresh)
                stack.extend(fresh)
    return seen


def upstream_of(graph: Graph, tensor: str) -> set[str]:
    """Every tensor whose value ``tensor`` depends on (shape reads excluded)."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if t not in graph.producer:
            continue
        for i in graph.dynamic_inputs(graph.nodes[graph.producer[t]]):
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def _backward(graph: Graph, outputs: Iterable[str], stop: set[str]) -> set[int]:
    """Indices of the nodes needed for ``outputs`` given the tensors in ``stop``."""
    needed: set[int] = set()
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t in stop or t not in graph.producer:
            continue
        seen.add(t)
        i = graph.producer[t]
        needed.add(i)
        node = graph.nodes[i]
        if node.op_type in SHAPE_OPS and node.input[0] in graph.dynamic:
            continue  # rebuilt from the segment input if upstream (see _rebuild_shape)
        stack.extend(node.input)
        stack.extend(_subgraph_inputs(node))
    return needed


def _computed(graph: Graph, tensor: str, needed: set[int]) -> bool:
    return tensor in graph.producer and graph.producer[tensor] in needed


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors read by If/Loop/Scan bodies."""
    names: list[str] = []
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            inner = {o for n in g.node for o in n.output} | {i.name for i in g.input}
            inner |= {t.name for t in g.initializer}
            names.extend(t for n in g.node for t in n.input if t and t not in inner)
    return names


def _rebuild_shape(
    graph: Graph, node: onnx.NodeProto, source: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Shape(x) for an upstream x: [batch of the segment input] + x's learned static dims."""
    dims = list(graph.tensors[node.input[0]].shape)
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (s + rank if s < 0 else s for s in (start, end))
    start, end = max(0, min(start, rank)), max(0, min(end, rank))
    out = node.output[0]
    prefix = f"{out}__splitmq"
    if start > 0 or end == 0:
        value = numpy_helper.from_array(np.array(dims[start:end], dtype=np.int64), f"{prefix}_c")
        return [helper.make_node("Identity", [value.name], [out])], [value]
    rest = numpy_helper.from_array(np.array(dims[1:end], dtype=np.int64), f"{prefix}_dims")
    zero = numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}_zero")
    shape = helper.make_node("Shape", [source], [f"{prefix}_shape"])
    batch = helper.make_node("Gather", [f"{prefix}_shape", zero.name], [f"{prefix}_batch"])
    concat = helper.make_node("Concat", [f"{prefix}_batch", rest.name], [out], axis=0)
    return [shape, batch, concat], [rest, zero]


def _value_info(graph: Graph, name: str) -> onnx.ValueInfoProto:
    """Type of a segment boundary: the learned per-sample shape with the model's batch,
    symbolic or fixed (a partition of a batch-1 export takes batch 1, as the model does)."""
    info = graph.tensors[name]
    batch: int | str = graph.batch or "N"
    shape: list[int | str] = [batch, *info.shape[1:]] if info.shape else []
    return helper.make_tensor_value_info(name, DTYPE_TO_ONNX[info.dtype], shape)
