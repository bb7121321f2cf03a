"""The hop executor on its own: no broker, tiny real ONNX graphs in a temporary pool."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import C, chain, early_exit, pool_of

from splitmq.shared.codecs import decode, encode
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.runtime.executor import HopExecutor, Job
from splitmq.shared.runtime.sessions import SessionCache

MAX_BYTES = 1 << 20


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    models = {"chain": chain(), "exits": early_exit()}
    return pool_of(tmp_path_factory.mktemp("pool"), models, ["a", "b"])  # fewer than 3 classes


@pytest.fixture(scope="module")
def executor(pool: ModelPool) -> HopExecutor:
    return HopExecutor(SessionCache(pool), MAX_BYTES)


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, C, 8, 8)).astype(np.float32)


def _full(mv: ModelVersion, x: np.ndarray) -> np.ndarray:
    session = make_session(mv.model_bytes, 1)
    return session.run([mv.output_names[-1]], {mv.cuts[0].name: x})[0][0]


def test_two_hops_reproduce_the_whole_model(pool: ModelPool, executor: HopExecutor) -> None:
    mv = pool.get("chain")
    x = _x()
    first = executor.execute_one(Job("chain", None, 0, 2, x, forward_codec="raw"))
    assert first.error is None and first.answer is None and first.forward is not None
    assert first.t_start <= first.t_done <= first.t_end
    second = executor.execute_one(Job("chain", None, 2, None, first.forward))
    assert second.error is None and second.answer is not None
    assert second.answer.output == mv.output_names[-1]
    probs = np.exp(_full(mv, x) - _full(mv, x).max())
    probs /= probs.sum()
    assert [t.index for t in second.answer.top] == list(np.argsort(-probs))
    assert [t.score for t in second.answer.top] == pytest.approx(np.sort(probs)[::-1], abs=1e-5)


def test_labels_are_used_only_where_the_label_file_has_one(
    pool: ModelPool, executor: HopExecutor
) -> None:
    outcome = executor.execute_one(Job("chain", None, 0, None, _x(1)))
    assert outcome.answer is not None
    labels = {t.index: t.label for t in outcome.answer.top}
    assert labels == {0: "a", 1: "b", 2: None}


def test_forward_uses_the_hop_codec(pool: ModelPool, executor: HopExecutor) -> None:
    mv = pool.get("chain")
    x = _x(2)
    raw = executor.execute_one(Job("chain", None, 0, 2, x, forward_codec="raw")).forward
    q = executor.execute_one(Job("chain", None, 0, 2, x, forward_codec="int8")).forward
    assert raw is not None and q is not None
    assert (raw.codec, q.codec) == ("raw", "int8")
    assert list(q.shape[1:]) == mv.cuts[2].shape[1:]
    assert len(q.data) * 4 == len(raw.data)
    assert np.allclose(decode(q), decode(raw), atol=np.ptp(decode(raw)) / 200)


def test_an_exit_head_answers_only_when_confident(pool: ModelPool, executor: HopExecutor) -> None:
    mv = pool.get("exits")
    exit_head, final = mv.output_names
    cut = next(c.index for c in mv.cuts if 0 < c.index < mv.last_cut)
    jobs = [
        Job("exits", None, 0, mv.last_cut - 1, _x(3), exit_threshold=0.0, forward_codec="raw"),
        Job("exits", None, 0, mv.last_cut - 1, _x(3), exit_threshold=1.0, forward_codec="raw"),
        Job("exits", None, 0, mv.last_cut - 1, _x(3), exit_threshold=None, forward_codec="raw"),
        Job("exits", None, cut, None, encode(_x(3), "raw"), exit_threshold=0.0),
    ]
    sure, never, off, last = executor.execute(jobs)
    assert sure.answer is not None and sure.answer.output == exit_head
    assert never.answer is None and never.forward is not None
    assert off.answer is None and off.forward is not None
    # On the last hop only the final output answers, whatever the threshold says.
    assert last.error is None and last.answer is not None and last.answer.output == final


@pytest.mark.parametrize(
    ("job", "code"),
    [
        (Job("nope", None, 0, None, _x()), "unknown_model"),
        (Job("chain", 7, 0, None, _x()), "unknown_model"),
        (Job("chain", None, 0, 99, _x(), forward_codec="raw"), "unknown_cut"),
        (Job("chain", None, 2, 1, _x(), forward_codec="raw"), "unknown_cut"),
        (Job("chain", None, 0, None, np.zeros((1, C, 4, 4), np.float32)), "bad_tensor"),
        (Job("chain", None, 0, None, np.zeros((1, C, 8, 8), np.float64)), "bad_tensor"),
        (Job("chain", None, 1, None, encode(np.zeros((1, 8, 8, 3), np.uint8), "u8")), "bad_tensor"),
        (Job("chain", None, 0, 2, _x()), "internal"),  # an array to forward needs a codec
    ],
)
def test_failures_carry_their_wire_code(executor: HopExecutor, job: Job, code: str) -> None:
    outcome = executor.execute_one(job)
    assert outcome.answer is None and outcome.forward is None
    assert outcome.error is not None and outcome.error.code == code, outcome.error


def test_one_outcome_per_job_in_order(executor: HopExecutor) -> None:
    jobs = [
        Job("chain", None, 0, None, _x(4)),
        Job("nope", None, 0, None, _x(4)),
        Job("chain", None, 0, 2, _x(5), forward_codec="fp16"),
    ]
    outcomes = executor.execute(jobs)
    assert [o.job for o in outcomes] == jobs
    assert outcomes[0].answer is not None
    assert outcomes[1].error is not None and outcomes[1].error.code == "unknown_model"
    assert outcomes[2].forward is not None and outcomes[2].forward.codec == "fp16"
