"""Mixed-precision partitions (``offline.mixed``): fashion-mnist-ee's int8 version up to
stage 2's pooling and its float graph after it, or the other way round, computing
exactly what the two parents' partitions compute; and the int8-head member served
over a real broker, answering as its measurements say."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest
from clitools import cli_env, run_cli

from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.errors import UserError
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline import samples
from splitmq.shared.offline.datasets import fashion_mnist
from splitmq.shared.offline.exit_report import outputs
from splitmq.shared.offline.mixed import DEQUANTIZED, join
from splitmq.shared.offline.zoo import FASHION_JOIN

pytestmark = pytest.mark.slow

FLOAT, INT8, MIXED = "fashion-mnist-ee", "fashion-mnist-ee-int8", "fashion-mnist-ee-int8-head"
STREAMED = 300  # test images through the broker
SENT = f"{FASHION_JOIN}_QuantizeLinear_Output"  # the int8 head's last tensor, in uint8


def cut_named(mv: ModelVersion, name: str) -> int:
    return next(c.index for c in mv.cuts if c.name == name)


def part(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The nodes of ``model`` from ``inputs`` to ``outputs``, as ONNX's extractor cuts."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return onnx.utils.Extractor(inferred).extract_model(inputs, outputs)


def run(model: onnx.ModelProto | bytes, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.fixture(scope="module")
def inputs(real_pool: ModelPool) -> np.ndarray:
    pre = real_pool.get(FLOAT).manifest.preprocess
    return samples.from_images(list(fashion_mnist("test")[0][:64]), pre)[1]


@pytest.mark.parametrize("head", [INT8, FLOAT])
def test_a_join_computes_what_its_parents_partitions_compute(real_pool, inputs, head) -> None:
    """The head's partition to the tensor (its quantised copy, for the int8 model), then
    the tail's partition from the tensor: the joined graph's every output, to the bit."""
    tail = FLOAT if head == INT8 else INT8
    hm, tm = real_pool.get(head).graph.model, real_pool.get(tail).graph.model
    whole = run(join(hm, tm, FASHION_JOIN), {"input": inputs})
    boundary = DEQUANTIZED.format(FASHION_JOIN) if head == INT8 else FASHION_JOIN
    sent = run(part(hm, ["input"], [boundary]), {"input": inputs})[boundary]
    rest = run(part(tm, [FASHION_JOIN], ["exit2", "logits"]), {FASHION_JOIN: sent})
    for name, value in rest.items():
        np.testing.assert_array_equal(whole[name], value, err_msg=name)
    parent = run(hm, {"input": inputs})
    # exit1 lies before the tensor: the head's; the rest comes from the tail's layers
    np.testing.assert_array_equal(whole["exit1"], parent["exit1"])
    assert not np.array_equal(whole["logits"], parent["logits"])


def test_a_join_names_a_tensor_both_graphs_compute(real_pool) -> None:
    f = onnx.load_from_string(real_pool.get(FLOAT).model_bytes)
    q = onnx.load_from_string(real_pool.get(INT8).model_bytes)
    fused = "/net/stage1/stage1.0/stage1.0.0/Conv_output_0"  # int8's Conv includes the ReLU
    with pytest.raises(UserError, match=f"no node computes '{fused}'"):
        join(q, f, fused)
    with pytest.raises(UserError, match="'nope'"):
        join(q, f, "nope")


def test_splitmq_family_join_adds_a_member_to_the_tails_family(real_pool, tmp_path) -> None:
    for name in (FLOAT, INT8, "mnist-cnn"):
        shutil.copytree(real_pool.root / name, tmp_path / name)
    env = cli_env(pool=tmp_path)
    args = ("family", "join", FLOAT, INT8, "--at", FASHION_JOIN, "--name", "tail8", "--json")
    done = run_cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["family"] == "fashion-mnist"
    added = ModelPool(tmp_path).get("tail8")
    assert added.manifest.family == "fashion-mnist"
    assert added.labels == real_pool.get(INT8).labels
    assert added.manifest.preprocess == real_pool.get(INT8).manifest.preprocess
    refused = run_cli("family", "join", FLOAT, "mnist-cnn", "--at", "x", "--name", "y", env=env)
    assert refused.returncode == 2
    assert "fashion-mnist-ee and mnist-cnn must be members of one family" in refused.stderr
    assert ModelPool(tmp_path).names() == sorted([FLOAT, INT8, "mnist-cnn", "tail8"])


def test_the_int8_head_member_is_measured_and_sends_uint8(real_pool) -> None:
    mv = real_pool.get(MIXED)
    assert mv.manifest.family == "fashion-mnist"
    quality = mv.manifest.quality
    assert quality is not None and quality.samples >= 1000 and quality.accuracy is not None
    assert mv.manifest.profiles and mv.manifest.calibration is not None
    at = mv.cuts[cut_named(mv, SENT)]
    float_at = real_pool.get(FLOAT).cuts[cut_named(real_pool.get(FLOAT), FASHION_JOIN)]
    assert at.dtype == "uint8" and at.bytes * 4 == float_at.bytes
    after = [c for c in mv.cuts if c.index > at.index]
    assert after and all(c.dtype == "float32" for c in after)  # the float layers' cuts


def test_the_int8_head_over_a_broker_answers_as_measured(settings, real_pool) -> None:
    """The device runs the int8 layers and sends stage 2's uint8 tensor as it is; the edge
    runs the float layers. Every answer is the unsplit partition's own, and its
    agreement with the family's reference and its labelled accuracy are what the family
    measurement says, within sampling error."""
    mv = real_pool.get(MIXED)
    quality = mv.manifest.quality
    assert quality is not None and quality.accuracy is not None
    images, labels = fashion_mnist("test")
    images, labels = list(images[:STREAMED]), labels[:STREAMED]
    pre = mv.manifest.preprocess
    assert pre is not None
    x = samples.from_images(images, pre)[1]
    own = np.argmax(outputs(mv, x)[-1], axis=1)
    reference = real_pool.get(quality.reference)
    ref = np.argmax(outputs(reference, x)[-1], axis=1)
    cut = cut_named(mv, SENT)
    cfg = settings.model_copy(update={"pool": real_pool.root})
    with (
        edge_worker(cfg, "mixed-edge", threads=1),
        Device(cfg, "mixed-dev", make_plan(mv, cut, "raw", "edge"), window=8) as dev,
    ):
        answers = [f.result(timeout=30) for f in [dev.submit(im) for im in images]]
    assert {a.tier for a in answers} == {"edge"}
    top1 = np.array([a.top1 for a in answers])
    np.testing.assert_array_equal(top1, own)
    for got, measured in (
        (np.mean(top1 == ref), quality.agreement),
        (np.mean(top1 == labels), quality.accuracy),
    ):
        sigma = math.sqrt(max(measured * (1 - measured), 0.01) / STREAMED)
        assert abs(got - measured) <= 3 * sigma, (got, measured)
