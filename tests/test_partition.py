"""Partitions: every one- and two-cut split of every test model reproduces the model."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx
import pytest
from clitools import cli_env, run_cli
from graphs import CLASSIC_IR_OPSETS, MODELS, classic, pool_of
from onnx import numpy_helper

from splitmq.shared.errors import ModelError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.split import (
    EXACT_ATOL,
    SplitCheck,
    check_exact,
    max_deviation,
    run_chain,
    split,
)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    models = {name.replace("_", "-"): build() for name, build in MODELS.items()}
    return pool_of(tmp_path_factory.mktemp("pool"), models)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_split_reproduces_the_model(pool, name):
    mv = pool.get(name.replace("_", "-"))
    x = mv.graph.sample_input()
    last = mv.last_cut
    checked = 0
    for a in range(1, last):
        assert max_deviation(mv, split(mv, a), x) <= EXACT_ATOL, f"cut {a}"
        checked += 1
        for b in range(a + 1, last):
            assert max_deviation(mv, split(mv, a, b), x) <= EXACT_ATOL, f"cuts {a}, {b}"
    assert checked == last - 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_partitions_pass_the_checker_and_take_only_the_cut_tensor(pool, name):
    mv = pool.get(name.replace("_", "-"))
    for a, b in itertools.combinations(range(mv.last_cut + 1), 2):
        model = onnx.load_from_string(mv.segment(a, b))
        onnx.checker.check_model(model, full_check=True)
        weights = {t.name for t in model.graph.initializer}
        inputs = [i.name for i in model.graph.input]
        assert inputs[0] == mv.cuts[a].name
        assert [i for i in inputs if i not in weights] == [mv.cuts[a].name]
        assert model.ir_version == mv.graph.model.ir_version
        assert model.opset_import == mv.graph.model.opset_import


def test_exit_head_is_an_output_of_the_partition_that_can_compute_it(pool):
    mv = pool.get("early-exit")
    exit_name, final = mv.graph.output_names
    names = [c.name for c in mv.cuts]
    before, after = names.index("relu4"), names.index("conv16")  # the head reads relu8
    parts = split(mv, before, after)
    outputs = [[o.name for o in onnx.load_from_string(p.onnx).graph.output] for p in parts]
    assert exit_name not in outputs[0]
    assert exit_name in outputs[1] and final not in outputs[1]
    assert outputs[2] == [final]
    late = split(mv, after)
    assert exit_name in [o.name for o in onnx.load_from_string(late[0].onnx).graph.output]
    assert set(run_chain(mv, late, mv.graph.sample_input())) == {exit_name, final}


def test_batch_dimension_stays_free(pool):
    mv = pool.get("batch-reshape")
    x = np.concatenate([mv.graph.sample_input()] * 3)
    out = run_chain(mv, split(mv, 2), x)
    assert next(iter(out.values())).shape[0] == 3


@pytest.mark.parametrize("cuts", [(0,), (99,), (3, 2), (2, 99)])
def test_impossible_cuts_are_user_errors(pool, cuts):
    mv = pool.get("chain")
    with pytest.raises(ModelError, match="cut"):
        split(mv, *cuts)


def test_exit_head_reading_the_cut_tensor_is_computed_by_the_segment_ending_there(pool):
    mv = pool.get("early-exit")
    exit_name, final = mv.graph.output_names
    names = [c.name for c in mv.cuts]
    parts = split(mv, names.index("relu4"), names.index("relu8"))  # the head reads relu8
    outputs = [[o.name for o in onnx.load_from_string(p.onnx).graph.output] for p in parts]
    assert outputs == [["relu4"], ["relu8", exit_name], [final]]


@pytest.mark.parametrize(("ir", "opset"), CLASSIC_IR_OPSETS)
def test_every_ir_version_splits_exactly(tmp_path, ir, opset):
    """IR 3 files (old model zoo) must declare weights as inputs in every partition too."""
    path = tmp_path / f"classic{ir}.onnx"
    onnx.save(classic(ir, opset), path)
    mv = ModelPool(tmp_path / "pool").add(path, f"classic-ir{ir}")
    x = mv.graph.sample_input()
    for a, b in itertools.combinations(range(mv.last_cut + 1), 2):
        model = onnx.load_from_string(mv.segment(a, b))
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == ir and model.opset_import[0].version == opset
        if ir < 4:
            inputs = {i.name for i in model.graph.input}
            assert {t.name for t in model.graph.initializer} <= inputs, (a, b)
    for a in range(1, mv.last_cut):
        for b in [None, *range(a + 1, mv.last_cut)]:
            verdict = check_exact(mv, split(mv, a, b), x)
            assert verdict.ok, (a, b, verdict)


def test_split_cli_on_an_ir3_model_reports_equivalent(tmp_path):
    path = tmp_path / "classic_ir3.onnx"
    onnx.save(classic(3, 8), path)
    out = tmp_path / "parts"
    r = run_cli(
        "split",
        str(path),
        "--cut",
        "2",
        "--cut",
        "5",
        "-o",
        str(out),
        env=cli_env(pool=tmp_path / "pool"),
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "equivalent" in r.stdout and "NOT" not in r.stdout
    for tier in ("device", "edge", "cloud"):
        model = onnx.load(out / f"{tier}.onnx")
        onnx.checker.check_model(model)
        assert model.ir_version == 3


def test_check_exact_is_the_tolerance_rule(pool):
    mv = pool.get("chain")
    x = mv.graph.sample_input()
    verdict = check_exact(mv, split(mv, 2), x)
    assert verdict == SplitCheck(verdict.max_abs_deviation, True)
    assert verdict.max_abs_deviation <= EXACT_ATOL
    assert check_exact(mv, split(mv, 2)).ok  # default: the model's sample input


def test_a_wrong_chain_is_not_exact(pool):
    mv = pool.get("chain")
    device, edge = split(mv, 2)
    model = onnx.load_from_string(edge.onnx)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 0.01, weight.name))
    broken = dataclasses.replace(edge, onnx=model.SerializeToString())
    verdict = check_exact(mv, [device, broken])
    assert not verdict.ok and verdict.max_abs_deviation > EXACT_ATOL
