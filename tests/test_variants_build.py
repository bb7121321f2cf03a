"""The model families' members as `make models` builds them: the small Fashion-MNIST
network and the int8 versions (``offline.quantize``), run on real held-out images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from splitmq.shared.model.split import check_exact, split
from splitmq.shared.offline import samples
from splitmq.shared.offline.datasets import fashion_mnist
from splitmq.shared.offline.exit_report import outputs
from splitmq.shared.offline.zoo import ZOO

pytestmark = pytest.mark.slow

FAMILY = "fashion-mnist"
LARGE, SMALL = "fashion-mnist-ee", "fashion-mnist-ee-small"
MEMBERS = (LARGE, SMALL, f"{LARGE}-int8", f"{SMALL}-int8")


@pytest.fixture(scope="module")
def test_inputs(real_pool) -> np.ndarray:
    """The 10,000 test images (never trained on, nor used to fit int8 ranges)."""
    pre = real_pool.get(LARGE).manifest.preprocess
    return samples.from_images(list(fashion_mnist("test")[0]), pre)[1]


@pytest.mark.parametrize("base", [LARGE, SMALL])
def test_int8_agrees_with_its_float_model_on_held_out_images(real_pool, test_inputs, base):
    """Measured top-1 agreement on the test split, final output and each exit: 0.991-0.996
    (large), 0.985-0.995 (small); a range or scale gone wrong drops far below 0.97."""
    float_out = outputs(real_pool.get(base), test_inputs)
    int8_out = outputs(real_pool.get(f"{base}-int8"), test_inputs)
    for name, f, q in zip(("exit1", "exit2", "logits"), float_out, int8_out, strict=True):
        agreement = float((f.argmax(-1) == q.argmax(-1)).mean())
        assert agreement >= 0.97, (base, name, agreement)


@pytest.mark.parametrize("base", [LARGE, SMALL])
def test_int8_graph_is_qdq_with_int8_weights(real_pool, base):
    float_model = real_pool.get(base)
    mv = real_pool.get(f"{base}-int8")
    model = mv.graph.model
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weights = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weights) == 10  # 7 convolutions, 3 linear heads
    stored = []
    for w in weights:
        dq = producer[w]
        assert dq.op_type == "DequantizeLinear", w
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8, w
        stored.append(inits[dq.input[0]])
    float_inits = {i.name: i for i in float_model.graph.model.graph.initializer}
    float_weights = [
        float_inits[n.input[1]]
        for n in float_model.graph.model.graph.node
        if n.op_type in ("Conv", "Gemm")
    ]
    # every weight quantised, none left in float; the file shrinks to 0.3-0.4 with the scales
    assert sum(np.prod(t.dims) for t in stored) == sum(np.prod(t.dims) for t in float_weights)
    assert mv.manifest.size < float_model.manifest.size / 2
    assert [o.name for o in mv.manifest.outputs] == ["exit1", "exit2", "logits"]


def test_small_network_costs_a_quarter_of_the_macs(real_pool):
    large, small = (real_pool.get(n).cuts[-1].macs_before for n in (LARGE, SMALL))
    assert 0.2 < small / large < 0.35, (small, large)


def test_every_member_is_in_the_family_and_ready(real_pool):
    for name in MEMBERS:
        m = real_pool.get(name).manifest
        assert m.family == FAMILY, name
        assert m.profiles and m.calibration is not None, name
        assert m.exits is not None and m.exits.final_accuracy >= 0.89, name
        assert [e.name for e in m.exits.exits] == ["exit1", "exit2"], name


def test_int8_model_splits_exactly_at_its_uint8_cuts(real_pool):
    """Between the input and the output, a QDQ model's cuts are the uint8 tensors between
    a QuantizeLinear and its DequantizeLinear: a quarter of the float bytes, and the
    integer kernels on both sides compute what the whole graph does at every one."""
    mv, base = real_pool.get(f"{LARGE}-int8"), real_pool.get(LARGE)
    inner = mv.cuts[1:-1]
    assert len(inner) >= 10 and {c.dtype for c in inner} == {"uint8"}
    quantised = {c.name.removesuffix("_QuantizeLinear_Output"): c for c in inner}
    floats = {c.name: c for c in base.cuts}
    shared = [name for name in quantised if name in floats]
    assert len(shared) >= 6
    for name in shared:
        assert quantised[name].bytes * 4 == floats[name].bytes, name
    x = mv.graph.sample_input(np.random.default_rng(0))
    for c in inner:
        assert check_exact(mv, split(mv, c.index), x).ok, c.name
    assert check_exact(mv, split(mv, inner[1].index, inner[-2].index), x).ok


def test_efficientnet_members_take_the_size_their_package_builds_them_for():
    """Lite1 and Lite2 have padding fixed for 240 and 260 pixels: the preprocessing must
    crop to exactly that (resized to size/0.875 first, as Lite0's 256 -> 224)."""
    utils = pytest.importorskip("efficientnet_lite_pytorch.utils")
    for index in (0, 1, 2):
        name = f"efficientnet-lite{index}"
        size = utils.efficientnet_params(name)[2]
        for member in (name, f"{name}-int8"):
            spec = ZOO[member]
            assert spec.family == "efficientnet-lite", member
            assert tuple(spec.preprocess.size) == (size, size), member
            assert spec.preprocess.resize == round(size / 0.875), member
    assert [z.name for z in ZOO.values() if z.family == "efficientnet-lite" and z.default] == [
        "efficientnet-lite0"
    ]
