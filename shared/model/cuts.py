"""Finding every place a model can be cut so that exactly one tensor crosses.

A tensor T is a cut when every node downstream of T reads no data tensor from
upstream except T itself (constants and shape reads may be recomputed on
either side) and T leads to the model's final output (to every one of a
detector's final heads; the last cut is then the last of them). For a single-output
model that is exactly "every path from the input to the output passes through
T"; for a model whose earlier outputs are early-exit heads it lets a head
that branches off before T stay on the upstream side. In a quantised (QDQ)
model only the uint8 tensors of its quantised layers are cuts, besides the
input and the output (``_inside_qdq``).

Descendant sets are Python-int bitsets, so all cuts of a DAG with n tensors
cost O(n²/64) word operations whatever the node order in the file.
"""

from __future__ import annotations

from splitmq.shared.model.graph import Graph
from splitmq.shared.model.manifest import Cut

# Ops that only relabel memory: a cut right after one is the same boundary.
RELABEL_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})


def find_cuts(graph: Graph) -> list[Cut]:
    """All distinct cuts in upstream order; cut 0 is the model input, the last the output."""
    order = _dynamic_tensors(graph)
    bit = {t: 1 << i for i, t in enumerate(order)}
    inputs_of = {
        t: _bits(graph.dynamic_inputs(graph.nodes[graph.producer[t]]), bit)
        for t in order
        if t in graph.producer
    }
    desc, reads = _descendants(graph, order, bit, inputs_of)
    finals = graph.finals
    # The last cut: a final that no other final is computed from.
    last = next(f for f in reversed(finals) if not any(desc[f] & bit.get(g, 0) for g in finals))
    candidates = [
        t
        for t in order
        if (t == last or all(desc[t] & bit.get(f, 0) for f in finals))  # leads to all finals
        and not reads[t] & ~(desc[t] | bit[t])  # downstream reads nothing else from upstream
        and (t in (graph.input_name, last) or not _inside_qdq(graph, t))
    ]
    candidates.sort(key=lambda t: -desc[t].bit_count())  # upstream first: most descendants
    return _table(graph, _drop_relabels(graph, candidates), desc, order)


def pads_previous(graph: Graph, cuts: list[Cut], index: int) -> bool:
    """Whether cut ``index`` is a Pad of the cut before it: the same values with a fixed
    border, which the far side could add itself. Sending it costs more bytes and device
    work than sending the cut before for no more information, so no plan should."""
    producer = graph.producer.get(cuts[index].name) if index > 0 else None
    if producer is None:
        return False
    node = graph.nodes[producer]
    return node.op_type == "Pad" and node.input[0] == cuts[index - 1].name


def _inside_qdq(graph: Graph, t: str) -> bool:
    """Whether ``t`` is a float tensor between a quantised node and its Quantize/
    DequantizeLinear pair (a DequantizeLinear output, or a QuantizeLinear input).

    ONNX Runtime fuses each DequantizeLinear -> op -> QuantizeLinear group of a QDQ
    model into an integer kernel; cut inside one, neither side holds the whole group,
    so each runs the op in float and rounds differently from the unsplit model
    (EfficientNet-Lite0 int8: 0.07 to 0.13 off in the logits at 10 such cuts). The
    uint8 tensor between a pair is the exact cut there, at a quarter of the bytes.
    """
    if t in graph.producer and graph.nodes[graph.producer[t]].op_type == "DequantizeLinear":
        return True
    return any(
        graph.nodes[i].op_type == "QuantizeLinear" and graph.nodes[i].input[0] == t
        for i in graph.consumers.get(t, [])
    )


def _dynamic_tensors(graph: Graph) -> list[str]:
    order = [graph.input_name]
    for n in graph.nodes:
        order.extend(o for o in n.output if o and o in graph.dynamic)
    return order


def _bits(names: list[str], bit: dict[str, int]) -> int:
    value = 0
    for n in names:
        value |= bit.get(n, 0)
    return value


def _descendants(
    graph: Graph, order: list[str], bit: dict[str, int], inputs_of: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """Per dynamic tensor: the bitset of its descendants, and of every tensor they read."""
    desc: dict[str, int] = {}
    reads: dict[str, int] = {}
    for t in reversed(order):
        below = read = 0
        for ci in graph.consumers.get(t, []):
            node = graph.nodes[ci]
            if t not in graph.dynamic_inputs(node):
                continue
            for o in node.output:
                if o in bit:
                    below |= bit[o] | desc[o]
                    read |= inputs_of[o] | reads[o]
        desc[t] = below
        reads[t] = read
    return desc, reads


def _drop_relabels(graph: Graph, cuts: list[str]) -> list[str]:
    """Keep one cut per boundary: the tensor before a Flatten/Reshape, not after it."""
    kept: list[str] = []
    for t in cuts:
        node = graph.nodes[graph.producer[t]] if t in graph.producer else None
        if (
            kept
            and node is not None
            and node.op_type in RELABEL_OPS
            and kept[-1] in node.input
            and t not in graph.output_names
            and graph.tensors[t].bytes == graph.tensors[kept[-1]].bytes
        ):
            continue
        kept.append(t)
    return kept


def _table(graph: Graph, cuts: list[str], desc: dict[str, int], order: list[str]) -> list[Cut]:
    """Bytes, MACs and parameter bytes on each side of every cut."""
    tensor_node = {t: graph.producer[t] for t in order if t in graph.producer}
    node_macs = {i: graph.macs(n) for i, n in enumerate(graph.nodes)}
    node_params = {i: graph.param_bytes(n) for i, n in enumerate(graph.nodes)}
    total_macs = sum(node_macs.values())
    total_params = sum(node_params.values())
    rows = []
    for index, t in enumerate(cuts):
        after_nodes = {tensor_node[order[b.bit_length() - 1]] for b in _each_bit(desc[t])}
        macs_after = sum(node_macs[i] for i in after_nodes)
        params_after = sum(node_params[i] for i in after_nodes)
        info = graph.tensors[t]
        rows.append(
            Cut(
                index=index,
                name=t,
                shape=list(info.shape),
                dtype=info.dtype,
                bytes=info.bytes,
                macs_before=total_macs - macs_after,
                macs_after=macs_after,
                params_before=total_params - params_after,
                params_after=params_after,
            )
        )
    return rows


def _each_bit(value: int):
    while value:
        low = value & -value
        yield low
        value ^= low
