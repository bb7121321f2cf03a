"""Dynamic batching: requests for one segment run as one ONNX Runtime call, each answered
with its own sample's result; a failure stays with its own request."""

from __future__ import annotations

from concurrent.futures import wait as wait_all

import numpy as np
import pytest
from kit import make_request

from splitmq.device.runtime import Device, InferenceFailed
from splitmq.shared.codecs import decode, encode
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.protocol.results import unpack_error
from splitmq.shared.protocol.wire import pack_request
from splitmq.shared.runtime.batching import Batches, default_max_batch
from splitmq.shared.runtime.executor import HopExecutor, Job, Outcome
from splitmq.shared.runtime.sessions import Segment, SessionCache
from splitmq.shared.runtime.worker import Worker

MAX_BYTES = 1 << 22
MODEL = "mnist-cnn"


@pytest.fixture(scope="module")
def mv(real_pool: ModelPool) -> ModelVersion:
    return real_pool.get(MODEL)


@pytest.fixture(scope="module")
def inputs(mv: ModelVersion) -> list[np.ndarray]:
    """The digits 0-7, as the model's input."""
    pre = mv.manifest.preprocess
    return [normalize(to_pixels(image, pre), pre) for image in digits()]


def digits() -> list[np.ndarray]:
    images, labels = mnist_digits()
    return [images[np.flatnonzero(labels == d)[0]] for d in range(8)]


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every segment run: (from cut, to cut, rows)."""
    seen: list[tuple[int, int, int]] = []
    run = Segment.run

    def spy(self: Segment, x: np.ndarray) -> dict[str, np.ndarray]:
        seen.append((self.a, self.b, len(x)))
        return run(self, x)

    monkeypatch.setattr(Segment, "run", spy)
    return seen


def at_cut(mv: ModelVersion, x: np.ndarray, cut: int, codec: str = "int8"):
    head = make_session(mv.segment(0, cut))
    return encode(head.run([mv.cuts[cut].name], {mv.cuts[0].name: x})[0], codec)


def top(outcome: Outcome) -> list[int]:
    assert outcome.error is None and outcome.answer is not None, outcome.error
    return [t.index for t in outcome.answer.top]


def test_a_batch_answers_each_request_with_its_own_sample(real_pool, mv, inputs, runs):
    executor = HopExecutor(SessionCache(real_pool), MAX_BYTES)
    jobs = [Job(MODEL, None, 3, None, at_cut(mv, x, 3)) for x in inputs]
    alone = [executor.execute_one(job) for job in jobs]
    runs.clear()
    together = executor.execute(jobs)
    assert runs == [(3, mv.last_cut, len(jobs))]  # one call for all eight
    assert len({top(o)[0] for o in alone}) > 1  # the digits differ: a mix-up would show
    for one, batched in zip(alone, together, strict=True):
        assert top(batched) == top(one)
        assert [t.score for t in batched.answer.top] == pytest.approx(
            [t.score for t in one.answer.top], abs=1e-5
        )


def test_mixed_segments_batch_apart_and_keep_their_order(real_pool, mv, inputs, runs):
    executor = HopExecutor(SessionCache(real_pool), MAX_BYTES)
    jobs = []
    for i, x in enumerate(inputs[:6]):  # interleaved: to the end from 3, to cut 10 from 6
        if i % 2:
            jobs.append(Job(MODEL, None, 6, 10, at_cut(mv, x, 6), forward_codec="raw"))
        else:
            jobs.append(Job(MODEL, None, 3, None, at_cut(mv, x, 3)))
    alone = [executor.execute_one(job) for job in jobs]
    runs.clear()
    together = executor.execute(jobs)
    assert sorted(runs) == [(3, mv.last_cut, 3), (6, 10, 3)]
    for job, one, batched in zip(jobs, alone, together, strict=True):
        if job.to is None:
            assert top(batched) == top(one)
        else:
            assert batched.forward is not None and one.forward is not None
            np.testing.assert_allclose(
                decode(batched.forward, MAX_BYTES), decode(one.forward, MAX_BYTES), atol=1e-5
            )


def test_a_failing_request_does_not_fail_the_batch(real_pool, mv, inputs, runs):
    executor = HopExecutor(SessionCache(real_pool), MAX_BYTES)
    good = [Job(MODEL, None, 3, None, at_cut(mv, x, 3)) for x in inputs[:4]]
    wrong_shape = Job(MODEL, None, 3, None, at_cut(mv, inputs[4], 6))
    no_cut = Job(MODEL, None, 3, 99, at_cut(mv, inputs[5], 3))
    no_model = Job("no-such-model", None, 3, None, at_cut(mv, inputs[6], 3))
    jobs = [good[0], wrong_shape, good[1], no_cut, good[2], no_model, good[3]]
    outcomes = executor.execute(jobs)
    assert [o.error.code for o in outcomes if o.error] == [
        "bad_tensor",
        "unknown_cut",
        "unknown_model",
    ]
    assert runs[-1] == (3, mv.last_cut, 4)  # the four good ones still ran as one
    for job, outcome in zip(good, (outcomes[i] for i in (0, 2, 4, 6)), strict=True):
        assert top(outcome) == top(executor.execute_one(job))


def test_a_batch_whose_run_fails_runs_its_requests_one_by_one(
    real_pool, mv, inputs, runs, monkeypatch
):
    executor = HopExecutor(SessionCache(real_pool), MAX_BYTES)
    jobs = [Job(MODEL, None, 3, None, at_cut(mv, x, 3)) for x in inputs[:3]]
    run = Segment.run  # the spy

    def no_batches(self: Segment, x: np.ndarray) -> dict[str, np.ndarray]:
        if len(x) > 1:
            raise RuntimeError("out of memory for a batch")
        return run(self, x)

    monkeypatch.setattr(Segment, "run", no_batches)
    executor.execute_one(jobs[0])  # the segment loaded (and warmed up)
    runs.clear()
    outcomes = executor.execute(jobs)
    assert all(o.error is None for o in outcomes)
    assert [rows for _, _, rows in runs] == [1, 1, 1]


def test_batches_take_what_is_queued_up_to_the_limit() -> None:
    import queue

    items: queue.Queue[int | None] = queue.Queue()
    for i in range(5):
        items.put(i)
    items.put(None)
    batches = Batches(items, max_batch=3, max_delay_s=0.0)
    assert batches.take() == ([0, 1, 2], False)
    assert batches.take() == ([3, 4], True)  # the stop comes after what it holds
    assert default_max_batch("cpu") == 1 and default_max_batch("cuda") > 1


def test_a_worker_batches_many_devices_and_answers_each_its_own(
    settings, real_pool, mv, inputs, make_client, inbox
):
    """Eight devices at once through one worker thread that batches: every device gets the
    unsplit model's answer for its own digit, and a bad request among them its error."""
    cfg = settings.model_copy(
        update={"pool": real_pool.root, "max_batch": 8, "max_queue_delay": "500ms"}
    )
    full = make_session(mv.model_bytes)
    want = [int(full.run(None, {"input": x})[0].argmax()) for x in inputs]
    assert len(set(want)) > 1
    images = digits()
    errors = inbox("errors for dev-bad")
    client = make_client("bad-sender")
    client.subscribe(cfg.topics.error("dev-bad"), errors, qos=1)
    wrong = encode(np.zeros((1, 2), np.float32), "raw")
    bad = make_request(model=mv, start=3, device="dev-bad", tensor=wrong)
    with Worker(cfg, "edge", "t-batch", threads=1) as worker:
        devices = [
            Device(cfg, f"dev-{i}", make_plan(mv, 3, "int8"), window=1).start() for i in range(8)
        ]
        try:
            for dev in devices:
                dev.infer(images[0])  # connected and warm
            futures = [dev.submit(images[i]) for i, dev in enumerate(devices)]
            client.publish(
                cfg.topics.request("edge", MODEL, 3, "dev-bad"), pack_request(bad), qos=1
            )
            wait_all(futures, timeout=30)
            assert [f.result().top1 for f in futures] == want
        finally:
            for dev in devices:
                dev.close()
        report = unpack_error(errors.wait(1, timeout=20)[0].payload)
        assert report.code == "bad_tensor"
        sizes = {
            s.labels["le"]: s.value
            for s in worker.metrics.registry.collect()
            for s in s.samples
            if s.name == "splitmq_worker_batch_size_bucket"
        }
        assert sizes["1.0"] < sizes["+Inf"]  # some requests ran together


def test_a_batch_shares_its_run_between_its_requests(real_pool, mv, inputs):
    """What the planner reads as the tier's service time is each request's share."""
    executor = HopExecutor(SessionCache(real_pool), MAX_BYTES)
    outcomes = executor.execute([Job(MODEL, None, 3, None, at_cut(mv, x, 3)) for x in inputs])
    assert {o.rows for o in outcomes} == {len(inputs)}
    assert outcomes[0].service_ms == pytest.approx(outcomes[0].compute_ms / len(inputs))


def test_a_short_batch_waits_at_most_its_delay_and_a_full_one_not_at_all() -> None:
    import queue
    import time

    items: queue.Queue[int | None] = queue.Queue()
    batches = Batches(items, max_batch=2, max_delay_s=0.2)
    items.put(1)
    start = time.monotonic()
    assert batches.take() == ([1], False)
    assert time.monotonic() - start >= 0.2
    items.put(2)
    items.put(3)
    start = time.monotonic()
    assert batches.take() == ([2, 3], False)
    assert time.monotonic() - start < 0.2


@pytest.mark.parametrize(
    ("given", "error"),
    [({"max_batch": 0}, "max_batch"), ({"max_queue_delay": "2s"}, "at most 1000 ms")],
)
def test_bad_batching_settings_are_refused(given, error) -> None:
    from splitmq.shared.errors import UserError
    from splitmq.shared.settings import Settings

    with pytest.raises(UserError, match=error):
        Settings.given(_env_file=None, **given)


class Broken(HopExecutor):
    """An executor whose first batch raises (a bug), then works."""

    failed = False

    def execute(self, jobs):
        if not Broken.failed:
            Broken.failed = True
            raise RuntimeError("a bug in the executor")
        return super().execute(jobs)


def test_an_executor_that_raises_still_answers_every_request(settings, real_pool, mv, inputs):
    """Each request of the batch hears an `internal` error, and the worker keeps serving."""
    cfg = settings.model_copy(update={"pool": real_pool.root})
    with (
        Worker(cfg, "edge", "t-broken", threads=1, executor=Broken),
        Device(cfg, "dev-broken", make_plan(mv, 3, "int8"), retries=0) as dev,
    ):
        with pytest.raises(InferenceFailed) as failed:
            dev.submit(digits()[1]).result(timeout=30)
        assert failed.value.code == "internal" and "a bug in the executor" in str(failed.value)
        assert dev.infer(digits()[2]).top1 == 2  # the same thread serves on
