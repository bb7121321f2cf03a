"""Attacks on other devices' traffic through a real mosquitto with TLS and the ACLs.

Each attack runs while a victim device (OTHER) sends requests through edge and cloud
and a victim camera (CAM) sends frames; each test then checks that all of them, 20 and
20, were answered. The attacks, found on an earlier broker set-up that checked reads
only at delivery:

* joining a worker group's shared subscription (mosquitto deals the group's requests
  to the intruder, which may not read them: dropped, never answered), or subscribing
  to wildcards, with every role's credentials;
* connecting with another client's id, which takes its session over;
* a retained request, which the broker replays to every worker that subscribes later.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from kit import Inbox, eventually, make_request
from PIL import Image
from secured import CAM, ME, OTHER, T

from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.errors import BrokerError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.protocol.wire import Hop, pack_request
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.transport.mqtt import MqttClient

MODEL, CUT, CLOUD_CUT, VICTIMS = "mnist-cnn", 4, 7, 20
PACE = 5  # frames a camera sends before it waits: half the edge's backlog of 10
DIGITS = mnist_digits()[0]
P = T.prefix
#: Every group and wildcard an intruder might try, written out by hand.
FILTERS = [
    f"$share/edge/{P}/edge/+/+/+",
    f"$share/cloud/{P}/cloud/+/+/+",
    f"$share/edge/{P}/frame/+/+",
    f"$share/x/{P}/edge/+/+/+",
    f"$share/x/{P}/cloud/+/+/+",
    f"$share/x/{P}/frame/+/+",
    f"$share/edge/{P}/#",
    "$share/edge/#",
    "$share/x/#",
    "#",
    "+/+/+/+/+/+",
    f"{P}/#",
    f"{P}/edge/+/+/+",
    f"{P}/cloud/+/+/+",
    f"{P}/frame/+/+",
    f"{P}/result/+",
    f"{P}/error/+",
    f"{P}/plan/+/+",
    f"{P}/telemetry/+/+",
    "$SYS/#",
]
#: What each role may subscribe to among FILTERS: its own worker group only, or, for the
#: monitor and the planner, plain filters that read copies without taking any away.
GRANTED = {
    "device": set(),
    "edge": {f"$share/edge/{P}/edge/+/+/+", f"$share/edge/{P}/frame/+/+"},
    "cloud": {f"$share/cloud/{P}/cloud/+/+/+"},
    "planner": {f"{P}/plan/+/+", f"{P}/telemetry/+/+"},
    "monitor": {f for f in FILTERS if f.startswith(f"{P}/")} | {"$SYS/#"},
    "operator": set(),
    "admin": set(),
}


def png(digit: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(digit.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def serving(secure_broker, real_pool: ModelPool) -> Iterator[None]:
    pool = {"pool": real_pool.root}
    with (
        edge_worker(secure_broker.user_settings("edge", **pool), "att-edge"),
        Worker(secure_broker.user_settings("cloud", **pool), "cloud", "att-cloud"),
    ):
        yield


@pytest.fixture(scope="module")
def victims(secure_broker, real_pool: ModelPool, serving) -> Iterator[tuple[Device, MqttClient]]:
    """The victim device (through edge and cloud) and the victim camera (frames)."""
    mv = real_pool.get(MODEL)
    cfg = secure_broker.user_settings(OTHER, pool=real_pool.root)
    camera = MqttClient(secure_broker.user_settings(CAM).connection(CAM)).connect(timeout=5)
    with Device(cfg, OTHER, make_plan(mv, CUT, "raw", cloud_cut=CLOUD_CUT)) as device:
        yield device, camera
    camera.close()


def all_answered(victims: tuple[Device, MqttClient]) -> None:
    """VICTIMS requests and VICTIMS frames, each answered: none swallowed or refused."""
    device, camera = victims
    answers = [device.infer(DIGITS[i]) for i in range(VICTIMS)]
    assert [a.tier for a in answers] == ["cloud"] * VICTIMS
    results, errors = Inbox("the camera's results"), Inbox("the camera's errors")
    camera.subscribe(T.result(CAM), results, qos=1)
    camera.subscribe(T.error(CAM), errors, qos=1)
    try:
        for i in range(VICTIMS):  # a camera's pace: fewer waiting than the edge takes
            camera.publish(T.frame(MODEL, CAM), png(DIGITS[i]), qos=1, wait=5)
            if (i + 1) % PACE == 0:
                results.wait(i + 1, timeout=30)
        results.wait(VICTIMS, timeout=30)
        assert errors.items == []
    finally:
        camera.unsubscribe(T.result(CAM))
        camera.unsubscribe(T.error(CAM))


def login(secure_broker, role: str) -> MqttClient:
    user, cid = (ME, ME) if role == "device" else (role, f"{role}-{uuid.uuid4().hex[:6]}")
    return MqttClient(secure_broker.user_settings(user).connection(cid)).connect(timeout=5)


@pytest.mark.parametrize("role", list(GRANTED))
def test_no_credentials_join_another_roles_group_or_read_through_wildcards(
    role, secure_broker, victims
) -> None:
    intruder = login(secure_broker, role)
    try:
        granted = set()
        for filt in FILTERS:
            try:
                intruder.subscribe(filt, lambda m: None, qos=1)
                granted.add(filt)
            except BrokerError as exc:
                assert "Not authorized" in str(exc), exc
        assert granted == GRANTED[role]
        for filt in granted:  # a worker's own group is its to serve, not an attack
            if filt.startswith("$share/"):
                intruder.unsubscribe(filt)
        all_answered(victims)
    finally:
        intruder.close()


def test_a_device_cannot_take_over_another_clients_id(secure_broker, victims) -> None:
    """Its credentials are bound to its own id: refused at CONNECT, so nobody is kicked
    off and no Last Will ("offline") goes out for the victim."""
    status = Inbox("the victim's status")
    watch = MqttClient(secure_broker.user_settings("monitor").connection("att-watch"))
    watch.subscribe(T.telemetry("device", OTHER), status, qos=1)
    watch.connect(timeout=5)
    status.wait(1)  # its retained "online": what a takeover's Last Will would replace
    try:
        for victim_id in (OTHER, CAM, "att-edge", "att-cloud", "monitor"):
            taker = MqttClient(secure_broker.user_settings(ME).connection(victim_id))
            with pytest.raises(BrokerError, match="Not authorized"):
                taker.connect(timeout=5)
            taker.close()
        all_answered(victims)
        assert all(m.payload and m.json().get("status") != "offline" for m in status.items)
    finally:
        watch.close()


def test_a_retained_request_is_not_run_again_by_workers_that_start_later(
    secure_broker, real_pool, victims
) -> None:
    """The broker keeps a request published with the retain flag (no ACL can refuse the
    flag) and gives it to each new subscriber: a new worker counts it and runs nothing."""
    mv = real_pool.get(MODEL)
    request = make_request((Hop("edge"),), start=CUT, model=mv, device=ME)
    topic = T.request("edge", MODEL, CUT, ME)
    attacker = login(secure_broker, "device")
    try:
        attacker.publish(
            topic, pack_request(request), qos=1, retain=True, wait=5,
            correlation_data=request.id.encode(),
        )  # fmt: skip
        cfg = secure_broker.user_settings("edge", pool=real_pool.root)
        with edge_worker(cfg, "att-edge-late") as late:
            eventually(
                lambda: late.stats.snapshot_counts().get("retained_requests") == 1,
                "the late worker to count the retained request",
            )
            all_answered(victims)  # served by both edge workers now
            assert late.stats.snapshot_counts().get("retained_requests") == 1
    finally:
        attacker.publish(topic, b"", qos=1, retain=True, wait=5)  # clears it
        attacker.close()
