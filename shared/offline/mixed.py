"""Mixed-precision partitions: one model's graph up to a tensor, another's after it.

Two members of a family that share a tensor (a float model and its int8
version from ``offline.quantize``) join there into one ONNX graph: the
head's nodes compute everything that does not depend on the tensor, the
tail's nodes everything that does. Joined int8 head + float tail, a device
runs integer kernels and sends the tensor in uint8 (the QDQ pair at the
boundary stays in the head, so the quarter-size uint8 tensor is a cut), and
the server finishes in float; joined the other way, a server runs the int8
tail. The result is an ordinary model: it is split, profiled and calibrated
like any other, so each partition's cost and agreement are measured, never
inferred from its two parents.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from splitmq.shared.errors import UserError

#: What ONNX Runtime's quantiser names a tensor's fake-quantised copy.
DEQUANTIZED = "{}_DequantizeLinear_Output"
TAIL = "tail/"  # prefix of the tail's own names, which may clash with the head's


def join(head: onnx.ModelProto, tail: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``head`` up to ``tensor``, ``tail`` after it; the outputs are ``tail``'s, in order.

    In a QDQ head the tensor's quantised copy (``tensor`` passed through its
    Quantize/DequantizeLinear pair) is what the tail reads, as the int8 model's
    own next layer does.
    """
    hg, tg = head.graph, tail.graph
    for graph, role in ((hg, "head"), (tg, "tail")):
        if tensor not in _produced(graph):
            raise UserError(f"{graph.name or role}: no node computes {tensor!r}; join at a cut")
    boundary = DEQUANTIZED.format(tensor)
    boundary = boundary if boundary in _produced(hg) else tensor
    after = _dependents(tg, tensor)
    outputs = [o.name for o in tg.output]
    from_tail = {o for o in outputs if o in after}
    from_head = [o for o in outputs if o not in from_tail]
    missing = [o for o in from_head if o not in _produced(hg)]
    if missing:
        raise UserError(f"the head does not compute {', '.join(missing)}, needed before {tensor}")
    head_nodes = _needed(hg, [boundary, *from_head])
    tail_nodes = _needed(tg, from_tail, stop=tensor)  # with the tail's constants

    def rename(name: str) -> str:
        if name == tensor:
            return boundary
        return name if name in from_tail or not name else TAIL + name

    renamed = []
    for node in tail_nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = TAIL + node.name
        copy.input[:] = [rename(i) for i in node.input]
        copy.output[:] = [rename(o) for o in node.output]
        renamed.append(copy)
    used = {i for n in renamed for i in n.input}
    weights = []
    for init in tg.initializer:
        if TAIL + init.name in used:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = TAIL + init.name
            weights.append(copy)
    head_used = {i for n in head_nodes for i in n.input}
    graph = onnx.helper.make_graph(
        [*head_nodes, *renamed],
        f"{hg.name or 'head'}+{tg.name or 'tail'}@{tensor}",
        list(hg.input),
        list(tg.output),
        [i for i in hg.initializer if i.name in head_used] + weights,
    )
    model = onnx.helper.make_model(graph, opset_imports=_opsets(head, tail))
    model.ir_version = max(head.ir_version, tail.ir_version)
    props = {p.key: p.value for p in tail.metadata_props}
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def _produced(graph: onnx.GraphProto) -> set[str]:
    return {o for n in graph.node for o in n.output}


def _dependents(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """The tensors computed from ``tensor`` (nodes are in topological order)."""
    found = {tensor}
    for node in graph.node:
        if any(i in found for i in node.input):
            found.update(node.output)
    return found - {tensor}


def _needed(graph: onnx.GraphProto, targets: Iterable[str], stop: str = "") -> list[onnx.NodeProto]:
    """The nodes ``targets`` are computed by from the inputs (or from ``stop``), in the
    graph's order."""
    want = set(targets)
    keep = []
    for node in reversed(graph.node):
        if any(o in want for o in node.output):
            keep.append(node)
            want.update(i for i in node.input if i and i != stop)
    return keep[::-1]


def _opsets(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    """Each operator domain at the highest version either model imports."""
    best: dict[str, int] = {}
    for model in models:
        for op in model.opset_import:
            best[op.domain] = max(best.get(op.domain, 0), op.version)
    return [onnx.helper.make_opsetid(domain, version) for domain, version in best.items()]
