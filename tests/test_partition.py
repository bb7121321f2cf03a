"""Partitions: every one- and two-cut split of every test model reproduces the model."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from graphs import MODELS

from splitmq.shared.errors import ModelError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.split import max_deviation, run_chain, split


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    mp = ModelPool(root / "pool")
    for name, build in MODELS.items():
        path = root / f"{name}.onnx"
        onnx.save(build(), path)
        mp.add(path, name.replace("_", "-"))
    return mp


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_split_reproduces_the_model(pool, name):
    mv = pool.get(name.replace("_", "-"))
    x = mv.graph.sample_input()
    last = mv.last_cut
    checked = 0
    for a in range(1, last):
        assert max_deviation(mv, split(mv, a), x) <= 1e-4, f"cut {a}"
        checked += 1
        for b in range(a + 1, last):
            assert max_deviation(mv, split(mv, a, b), x) <= 1e-4, f"cuts {a}, {b}"
    assert checked == last - 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_partitions_pass_the_checker_and_take_only_the_cut_tensor(pool, name):
    mv = pool.get(name.replace("_", "-"))
    for a, b in itertools.combinations(range(mv.last_cut + 1), 2):
        model = onnx.load_from_string(mv.segment(a, b))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == [mv.cuts[a].name]


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
