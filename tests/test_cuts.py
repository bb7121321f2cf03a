"""Cut finding on tiny in-memory graphs: every kind of DAG, any node order."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import MODELS, classic, early_exit, inception, residual

from splitmq.shared.model.cuts import find_cuts
from splitmq.shared.model.graph import Graph


def names(model) -> list[str]:
    return [c.name for c in find_cuts(Graph(model))]


def test_chain_has_a_cut_after_every_layer_and_drops_the_flatten():
    cuts = find_cuts(Graph(MODELS["chain"]()))
    assert [c.name for c in cuts] == [
        "x",
        "conv3",
        "relu4",
        "conv7",
        "relu8",
        "globalaveragepool9",
        "gemm13",
    ]
    assert cuts[0].index == 0 and cuts[-1].shape == [1, 3]
    # Flatten after the pooled tensor is the same boundary: the pooled tensor is kept.
    assert "flatten10" not in [c.name for c in cuts]


def test_residual_blocks_only_cut_between_blocks():
    got = names(residual())
    # conv/relu inside a block are bypassed by the skip connection
    assert got == [
        "x",
        "conv3",
        "relu4",
        "add12",
        "relu13",
        "add21",
        "relu22",
        "globalaveragepool23",
        "gemm27",
    ]


def test_node_order_in_the_file_does_not_matter():
    assert names(residual(shuffle=True)) == names(residual())


def test_constants_as_nodes_give_the_same_cuts():
    assert names(residual(constants_as_nodes=True)) == names(residual())


def test_inception_branches_are_not_cuts_but_the_concat_is():
    got = names(inception())
    assert got[:4] == ["x", "conv3", "relu4", "concat15"]
    for inside in ("conv7", "conv10", "conv13", "maxpool14"):
        assert inside not in got


def test_densenet_block_has_no_inner_cut():
    got = names(MODELS["densenet"]())
    assert got == ["x", "conv3", "concat18", "globalaveragepool19", "gemm23"]


def test_early_exit_head_stays_upstream_and_later_cuts_exist():
    got = names(early_exit())
    # cuts after the exit branch point are valid: the exit head is computed before them
    assert got == [
        "x",
        "conv3",
        "relu4",
        "conv7",
        "relu8",
        "conv16",
        "relu17",
        "conv20",
        "relu21",
        "globalaveragepool22",
        "gemm26",
    ]  # the exit head (…9-13) is no cut


def test_shape_of_the_input_does_not_block_cuts():
    got = names(MODELS["batch_reshape"]())
    assert got == ["x", "conv3", "relu4", "maxpool12", "gemm15"]


def test_initializers_listed_as_inputs_are_not_model_inputs():
    cuts = find_cuts(Graph(MODELS["old_style_inputs"]()))
    assert cuts[0].name == "x" and len(cuts) > 3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_macs_and_params_are_conserved(name):
    cuts = find_cuts(Graph(MODELS[name]()))
    totals = {(c.macs_before + c.macs_after, c.params_before + c.params_after) for c in cuts}
    assert len(totals) == 1
    assert cuts[0].macs_before == 0 and cuts[-1].macs_after == 0
    assert [c.macs_before for c in cuts] == sorted(c.macs_before for c in cuts)


def test_conv_macs_count_groups():
    cuts = find_cuts(Graph(MODELS["inverted_residual"]()))
    # conv3: 4->4, 3x3 on 8x8 = 8*8*4*4*9
    assert cuts[1].name == "conv3" and cuts[1].macs_before == 8 * 8 * 4 * 4 * 9
    assert cuts[1].bytes == 4 * 8 * 8 * 4


def test_ir3_weights_as_inputs_give_the_cuts_of_the_same_model_in_a_newer_ir():
    old, new = names(MODELS["classic_ir3"]()), names(classic(7, 12))
    assert old == new and old[0] == "x" and len(old) > 5


def test_a_quantised_model_cuts_only_at_its_uint8_tensors():
    """In QDQ form a conv's DequantizeLinear -> Conv -> QuantizeLinear group runs as one
    integer kernel; a float tensor inside a group is no cut (each side would run the op
    in float), the uint8 tensor between a QuantizeLinear and its DequantizeLinear is."""
    from splitmq.shared.offline.quantize import quantize

    model = residual()
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    calibration = np.random.default_rng(0).standard_normal([16, *shape[1:]]).astype(np.float32)
    graph = Graph(quantize(model, calibration))
    cuts = find_cuts(graph)
    inner = cuts[1:-1]
    assert len(inner) >= 3
    assert all(graph.nodes[graph.producer[c.name]].op_type == "QuantizeLinear" for c in inner)
    assert {c.dtype for c in inner} == {"uint8"}
    assert (cuts[0].name, cuts[-1].name) == (graph.input_name, graph.output_names[-1])
