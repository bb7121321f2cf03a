"""The MQTT data plane end to end: real mosquitto, real models, every split shape.

Each answer is checked against the unsplit model run locally on the same frame.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest
from clitools import cli_env, start_cli, wait_online
from kit import make_request

from splitmq.device.runtime import Device, InferenceFailed
from splitmq.edge.worker import edge_worker
from splitmq.shared.codecs import encode
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.offline.datasets import mnist_digits, photos
from splitmq.shared.offline.exits import softmax
from splitmq.shared.protocol.results import unpack_error
from splitmq.shared.protocol.wire import Hop, pack_request
from splitmq.shared.runtime.worker import Worker

pytestmark = pytest.mark.slow


@pytest.fixture
def cfg(settings, real_pool):
    return settings.model_copy(update={"pool": real_pool.root})


@pytest.fixture
def workers(cfg):
    """One edge and one cloud worker, in-process, on this test's topics."""
    with edge_worker(cfg, "t-edge") as edge, Worker(cfg, "cloud", "t-cloud") as cloud:
        yield edge, cloud


def unsplit_probs(mv, frame) -> np.ndarray:
    pre = mv.manifest.preprocess
    x = normalize(to_pixels(frame, pre), pre)
    out = make_session(mv.model_bytes).run([mv.graph.output_names[-1]], {"input": x})[0][0]
    return softmax(out.astype(np.float64))


def assert_matches(answer, probs, tol):
    top = np.argsort(-probs)[: len(answer.top)]
    assert [t.index for t in answer.top][:3] == list(top[:3])
    for t in answer.top:
        assert abs(t.score - probs[t.index]) <= tol


def digits(n):
    images, _ = mnist_digits()
    return [images[i] for i in range(n)]


def test_device_only_never_touches_the_network(cfg, real_pool):
    mv = real_pool.get("mnist-cnn")
    plan = make_plan(mv, mv.last_cut)
    with Device(cfg, "dev-local", plan) as dev:
        for frame in digits(3):
            answer = dev.infer(frame)
            assert answer.tier == "device" and answer.bytes_sent == 0
            assert_matches(answer, unsplit_probs(mv, frame), 1e-5)


@pytest.mark.parametrize("codec", ["u8", "jpeg:95"])
def test_edge_only_from_the_compressed_input(cfg, real_pool, workers, codec):
    mv = real_pool.get("efficientnet-lite0")
    plan = make_plan(mv, 0, codec)
    frame = photos(1, seed=0)[0]  # the cat
    with Device(cfg, "dev-input", plan) as dev:
        answer = dev.infer(frame)
    assert answer.tier == "edge" and answer.exit == "logits"
    # u8 is the exact pixels; JPEG at q95 moves scores a little, not the ranking
    assert_matches(answer, unsplit_probs(mv, frame), 1e-4 if codec == "u8" else 0.05)
    assert answer.bytes_sent < (224 * 224 * 3 + 1000 if codec == "u8" else 40_000)


@pytest.mark.parametrize(("codec", "tol"), [("raw", 1e-4), ("fp16", 2e-3), ("int8", 0.05)])
def test_device_to_edge(cfg, real_pool, workers, codec, tol):
    mv = real_pool.get("mnist-cnn")
    plan = make_plan(mv, 4, codec)
    with Device(cfg, "dev-edge", plan, window=4) as dev:
        frames = digits(12)
        answers = [f.result(timeout=30) for f in [dev.submit(f) for f in frames]]
    for frame, answer in zip(frames, answers):
        assert answer.tier == "edge"
        assert_matches(answer, unsplit_probs(mv, frame), tol)
        device_hop, edge_hop = answer.latency
        assert device_hop.tier == "device" and edge_hop.id == "t-edge"
        assert edge_hop.compute_ms > 0 and edge_hop.bytes == answer.bytes_sent


def test_device_edge_cloud_escalates_unless_the_exit_is_confident(cfg, real_pool, workers):
    mv = real_pool.get("efficientnet-lite0-ee")
    names = [c.name for c in mv.cuts]
    cut, cloud_cut = names.index("/_blocks.4/Add_output_0"), names.index("/_blocks.10/Add_output_0")
    frames = photos(4, seed=3)
    never_exit = make_plan(mv, cut, "raw", "edge", cloud_cut, exit_threshold=1.0)
    always_exit = make_plan(mv, cut, "raw", "edge", cloud_cut, exit_threshold=0.0)
    with Device(cfg, "dev-ee", never_exit) as dev:
        escalated = [dev.infer(f) for f in frames]
    with Device(cfg, "dev-ee2", always_exit) as dev:
        exited = [dev.infer(f) for f in frames]
    for frame, answer in zip(frames, escalated):
        assert (answer.tier, answer.exit) == ("cloud", "logits")
        assert [h.tier for h in answer.latency] == ["device", "edge", "cloud"]
        assert_matches(answer, unsplit_probs(mv, frame), 1e-4)
    assert {(a.tier, a.exit) for a in exited} == {("edge", "exit_logits")}


def test_results_and_errors_are_plain_json_for_mosquitto_sub(
    cfg, real_pool, workers, broker, topics, make_client
):
    """A malformed payload from mosquitto_pub gets an error; the next good request is served."""
    if not shutil.which("mosquitto_pub"):
        pytest.fail("mosquitto-clients missing: make test installs it")
    port = str(broker.port)
    marker = topics.telemetry("device", "marker")
    make_client("marker").publish(marker, b"{}", retain=True, wait=5)
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-p",
            port,
            "-V",
            "mqttv5",
            "-v",
            "-C",
            "3",
            "-t",
            marker,
            "-t",
            topics.error("dev-pub"),
            "-t",
            topics.result("dev-pub"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sub.stdout.readline().startswith(marker)  # retained: it is subscribed now
        bad = topics.request("edge", "mnist-cnn", 4, "dev-pub")
        subprocess.run(
            ["mosquitto_pub", "-p", port, "-q", "1", "-t", bad, "-m", "not msgpack"],
            check=True,
            timeout=10,
        )
        error_line = sub.stdout.readline()
        mv = real_pool.get("mnist-cnn")
        with Device(cfg, "dev-pub", make_plan(mv, 4, "raw")) as dev:
            answer = dev.infer(digits(1)[0])
        result_line = sub.stdout.readline()
    finally:
        sub.kill()
    topic, payload = error_line.split(" ", 1)
    assert topic == topics.error("dev-pub")
    report = unpack_error(payload.strip().encode())
    assert report.code == "bad_payload" and "payload" in report.message
    topic, payload = result_line.split(" ", 1)
    assert topic == topics.result("dev-pub")
    assert json.loads(payload)["id"] == answer.id and answer.tier == "edge"


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("tensor_shape", "bad_tensor", "takes one sample, [1, 64, 14, 14] float32"),
        ("batch_of_two", "bad_tensor", "got [2, 64, 14, 14]"),
        ("unknown_model", "unknown_model", "no model 'no-such-model'"),
        ("cut_past_end", "unknown_cut", "cannot run"),
        ("wrong_tier", "bad_route", "hop 0 is for cloud"),
        ("expired", "expired", "expired"),
    ],
)
def test_bad_requests_get_specific_errors_and_the_worker_keeps_serving(
    cfg, real_pool, workers, topics, make_client, inbox, case, code, words
):
    mv = real_pool.get("mnist-cnn")
    sent = {"model": mv, "device": "dev-bad"}  # from cut 4, with a tensor that fits there
    request = {
        "tensor_shape": lambda: make_request(
            tensor=encode(np.zeros((1, 3, 5, 5), np.float32), "raw"), **sent
        ),
        "batch_of_two": lambda: make_request(
            tensor=encode(np.zeros((2, 64, 14, 14), np.float32), "raw"), **sent
        ),
        "unknown_model": lambda: replace(make_request(**sent), model="no-such-model"),
        "cut_past_end": lambda: make_request((Hop("edge", 99, None), Hop("cloud")), **sent),
        "wrong_tier": lambda: make_request((Hop("cloud"),), **sent),
        "expired": lambda: make_request(deadline=time.time(), **sent),
    }[case]()
    client = make_client("bad-sender")
    errors = inbox("errors for dev-bad")
    client.subscribe(topics.error("dev-bad"), errors)
    client.publish(topics.request("edge", request.model, 4, "dev-bad"), pack_request(request))
    report = unpack_error(errors.wait(1, timeout=20)[0].payload)
    assert (report.code, report.id) == (code, request.id)
    assert words in report.message
    with Device(cfg, "dev-good", make_plan(mv, 4, "raw")) as dev:
        assert dev.infer(digits(1)[0]).tier == "edge"


@pytest.mark.parametrize("model, cut", [(".hidden", "4"), ("mnist-cnn", "021")])
def test_a_bad_model_or_cut_in_the_topic_is_answered_on_the_devices_error_topic(
    cfg, workers, topics, make_client, inbox, model, cut
):
    """The device id in the topic is valid, so the device hears what else is wrong."""
    client = make_client("bad-topic")
    errors = inbox("errors for dev-topic")
    client.subscribe(topics.error("dev-topic"), errors)
    client.publish(f"{topics.prefix}/edge/{model}/{cut}/dev-topic", b"x", qos=1, wait=5)
    report = unpack_error(errors.wait(1, timeout=20)[0].payload)
    assert report.code == "bad_route"
    assert repr(model if model != "mnist-cnn" else cut) in report.message


def test_two_edge_workers_share_the_load(cfg, real_pool):
    mv = real_pool.get("mnist-cnn")
    with (
        edge_worker(cfg, "share-a", threads=1, queue_size=1) as a,
        edge_worker(cfg, "share-b", threads=1, queue_size=1) as b,
        Device(cfg, "dev-share", make_plan(mv, 4, "raw"), window=8) as dev,
    ):
        answers = [f.result(timeout=30) for f in [dev.submit(f) for f in digits(40)]]
    served = {w.id: w.stats.snapshot_counts().get("served", 0) for w in (a, b)}
    assert sum(served.values()) == 40 and min(served.values()) >= 5, served
    assert {ans.latency[1].id for ans in answers} == {"share-a", "share-b"}


def test_killing_an_edge_worker_mid_stream_loses_nothing(cfg, real_pool, workers):
    """SIGKILL one of two edge workers: every request ends as a result or a visible failure."""
    mv = real_pool.get("efficientnet-lite0")
    victim = start_cli(
        "edge",
        "--id",
        "victim",
        "--workers",
        "1",
        "--queue",
        "4",
        env=cli_env(cfg),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_online(cfg, "edge", "victim")
        frames = photos(30, seed=11)
        # Frozen first, so that it surely holds requests (about half: the shared
        # subscription deals them out in turn) when it dies.
        victim.send_signal(signal.SIGSTOP)
        with Device(cfg, "dev-kill", make_plan(mv, 21, "raw"), window=6, timeout_s=3.0) as dev:
            futures = []
            for i, frame in enumerate(frames):
                futures.append(dev.submit(frame))
                if i == 10:
                    victim.send_signal(signal.SIGKILL)
            outcomes = []
            for fut in futures:
                try:
                    outcomes.append(fut.result(timeout=30))  # a request that vanished times out
                except InferenceFailed as exc:
                    outcomes.append(exc)
        retries = dev.stats.snapshot_counts().get("retries", 0)
    finally:
        victim.kill()
        victim.wait()
    answered = [o for o in outcomes if not isinstance(o, InferenceFailed)]
    assert len(answered) == len(frames), [str(o) for o in outcomes if isinstance(o, Exception)]
    assert {a.latency[1].id for a in answered} == {"t-edge"}  # the survivor answered all
    assert retries >= 1  # what the victim held was sent again and answered by the survivor
    assert sum(a.attempts - 1 for a in answered) == retries
