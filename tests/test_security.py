"""Security against a real mosquitto run with ``splitmq secure`` files: who may do what.

The access matrix below is the topic contract written out by hand (docs/security.md),
not read from ``shared.protocol.access``, so a wrong grant there fails here. Every
role tries every kind of topic both ways over TLS: what the matrix allows is
delivered, what it forbids is refused by the broker (PUBACK or SUBACK "not
authorized") and never reaches anyone. Attacks on other devices' traffic (worker
groups, client ids, retained requests) are in ``test_attacks.py``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import Inbox, eventually
from secured import DEVICES, ME, OTHER, OTHER_SITE, RUNNER, SITE, T

from splitmq.broker.dynsec import hash_password
from splitmq.broker.launcher import Broker
from splitmq.broker.secure import SecureDir
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.errors import BrokerError, UserError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

SITE_TREE, OTHER_TREE = T.at_site(SITE), T.at_site(OTHER_SITE)
#: kind -> topic; "own"/"other's" is from the point of view of device ME.
KINDS = {
    "edge request, own": T.request("edge", "m", 1, ME),
    "edge request, other's": T.request("edge", "m", 1, OTHER),
    "cloud request, own": T.request("cloud", "m", 1, ME),
    "cloud request, other's": T.request("cloud", "m", 1, OTHER),
    "result, own": T.result(ME),
    "result, other's": T.result(OTHER),
    "error, own": T.error(ME),
    "error, other's": T.error(OTHER),
    "plan, own": T.plan(ME, "m"),
    "plan, other's": T.plan(OTHER, "m"),
    "probe, own": T.probe(ME),
    "probe, other's": T.probe(OTHER),
    "device telemetry, own": T.telemetry("device", ME),
    "device telemetry, other's": T.telemetry("device", OTHER),
    "edge telemetry": T.telemetry("edge", "e1"),
    "cloud telemetry": T.telemetry("cloud", "c1"),
    "planner telemetry": T.telemetry("planner", "p1"),
    "frame, own": T.frame("m", ME),
    "frame, other's": T.frame("m", OTHER),
    "model": T.model("m"),
    "ping": T.ping("e1"),
    "pong": T.pong("e1"),
    # a site's tree, as its bridge carries it to this (the cloud) broker
    "site cloud request": SITE_TREE.request("cloud", "m", 1, ME),
    "site result": SITE_TREE.result(ME),
    "site ping": SITE_TREE.ping("e1"),
    "site pong": SITE_TREE.pong("e1"),
    "site telemetry": SITE_TREE.telemetry("device", ME),
    "site error": SITE_TREE.error(ME),
    # another site's tree: nothing of it is the first site's to read or write
    "other site's cloud request": OTHER_TREE.request("cloud", "m", 1, ME),
    "other site's result": OTHER_TREE.result(ME),
    "other site's pong": OTHER_TREE.pong("e1"),
}
ALL = set(KINDS)
REQUESTS = {k for k in KINDS if "request" in k}
TELEMETRY = {k for k in KINDS if "telemetry" in k and not k.startswith("site")}
#: role -> the kinds it may publish to / subscribe to: the contract, by hand.
WRITE = {
    "device": {"edge request, own", "cloud request, own", "probe, own", "device telemetry, own"}
    | {"frame, own", "result, own"},
    "site": {"site cloud request", "site ping", "site telemetry"},
    "edge": {"cloud request, own", "cloud request, other's", "edge telemetry"}
    | {"result, own", "result, other's", "error, own", "error, other's", "ping"},
    "cloud": {"result, own", "result, other's", "error, own", "error, other's"}
    | {"cloud telemetry", "pong", "site result", "site pong", "site error"}
    | {"other site's result", "other site's pong"},
    "planner": {"plan, own", "plan, other's", "planner telemetry"},
    "monitor": set(),
    "operator": {"model"},
    "admin": set(),
}
READ = {
    "device": {"result, own", "error, own", "plan, own"},
    "site": {"site result", "site error", "site pong", "model", "cloud telemetry"},
    "edge": {"edge request, own", "edge request, other's", "frame, own", "frame, other's"}
    | {"model", "pong"},
    "cloud": {"cloud request, own", "cloud request, other's", "model", "ping"}
    | {"site cloud request", "site ping", "other site's cloud request"},
    "planner": TELEMETRY | {"plan, own", "plan, other's", "model"},
    "monitor": ALL,
    "operator": {"model"},
    "admin": set(),
}
#: How each role subscribes to a kind: a worker reads its tier's requests (and the edge
#: camera frames) only as one of its group; every other filter is plain.
GROUP = {
    "edge": {"edge request", "frame"},
    "cloud": {"cloud request", "ping", "site cloud request", "site ping", "other site's cloud"},
}
#: Who publishes each kind when a reader is checked (each one allowed by WRITE).
WRITER = {
    "edge request, own": ME,
    "edge request, other's": OTHER,
    "cloud request, own": ME,
    "cloud request, other's": OTHER,
    "result, own": "edge",
    "result, other's": "edge",
    "error, own": "edge",
    "error, other's": "edge",
    "plan, own": "planner",
    "plan, other's": "planner",
    "probe, own": ME,
    "probe, other's": OTHER,
    "device telemetry, own": ME,
    "device telemetry, other's": OTHER,
    "edge telemetry": "edge",
    "cloud telemetry": "cloud",
    "planner telemetry": "planner",
    "frame, own": ME,
    "frame, other's": OTHER,
    "model": "operator",
    "ping": "edge",
    "pong": "cloud",
    "site cloud request": SITE,
    "site result": "cloud",
    "site ping": SITE,
    "site pong": "cloud",
    "site telemetry": SITE,
    "site error": "cloud",
    "other site's cloud request": OTHER_SITE,
    "other site's result": "cloud",
    "other site's pong": "cloud",
}
DIGITS = mnist_digits()[0]
USER = {
    "device": ME,
    "site": SITE,
    "edge": "edge",
    "cloud": "cloud",
    "planner": "planner",
    "monitor": "monitor",
    "operator": "operator",
    "admin": "admin",
}


def client_id(user: str) -> str:
    """A device may connect only as its own id; a service user as any."""
    return user if user in (*DEVICES, SITE, OTHER_SITE) else f"{user}-{uuid.uuid4().hex[:6]}"


def filter_for(role: str, kind: str, topic: str) -> str:
    grouped = any(kind.startswith(k) for k in GROUP.get(role, ()))
    return f"$share/{role}/{topic}" if grouped else topic


@pytest.fixture(scope="module")
def clients(secure_broker: Broker) -> Iterator[dict[str, MqttClient]]:
    made = {
        user: MqttClient(secure_broker.user_settings(user).connection(client_id(user)))
        for user in (*USER.values(), OTHER, OTHER_SITE)
    }
    for client in made.values():
        client.connect(timeout=5)
    yield made
    for client in made.values():
        client.close()


@pytest.mark.parametrize("role", list(USER))
def test_each_role_publishes_only_where_the_contract_lets_it(role, clients) -> None:
    watch = Inbox("messages the monitor sees")
    monitor = clients["monitor"]
    filt = f"{T.prefix}/#"
    monitor.subscribe(filt, watch, qos=1)
    try:
        sent: dict[str, bytes] = {}
        for kind, topic in KINDS.items():
            payload = f"{role}:{kind}:{uuid.uuid4().hex}".encode()
            if kind in WRITE[role]:
                clients[USER[role]].publish(topic, payload, qos=1, wait=5)
                sent[kind] = payload
            else:
                with pytest.raises(BrokerError, match="Not authorized"):
                    clients[USER[role]].publish(topic, payload, qos=1, wait=5)
        fence = f"fence:{uuid.uuid4().hex}".encode()
        clients["edge"].publish(T.result(ME), fence, qos=1, wait=5)
        got = {
            m.payload
            for m in eventually(
                lambda: watch.items if any(m.payload == fence for m in watch.items) else None,
                "the fence",
            )
        }
        mine = {p for p in got if p.startswith(f"{role}:".encode())}
        assert mine == set(sent.values())  # all allowed arrived, nothing refused did
    finally:
        monitor.unsubscribe(filt)


def _fenced(reader: MqttClient, clients, filters: list[str], traffic: dict[str, str], fence_kind):
    """Subscribe ``reader`` to ``filters``, publish ``traffic`` (topic -> its writer), then a
    fence the reader may read; once the fence is in, return what each filter got (None:
    the broker refused the subscription).

    Mosquitto routes a message before it acknowledges it, so whatever it would deliver
    for the traffic is queued for the reader ahead of the fence."""
    boxes: dict[str, Inbox | None] = {}
    for f in filters:
        boxes[f] = Inbox(f"messages on {f}")
        try:
            reader.subscribe(f, boxes[f], qos=1)
        except BrokerError as exc:
            assert "Not authorized" in str(exc), exc
            boxes[f] = None
    granted = {f: b for f, b in boxes.items() if b is not None}
    try:
        if granted:
            for topic, writer in traffic.items():
                clients[writer].publish(topic, topic.encode(), qos=1, wait=5)
            clients[WRITER[fence_kind]].publish(KINDS[fence_kind], b"fence", qos=1, wait=5)
            eventually(
                lambda: any(m.payload == b"fence" for b in granted.values() for m in b.items),
                "fence",
            )
        return {
            f: None if b is None else {m.payload.decode() for m in b.items if m.payload != b"fence"}
            for f, b in boxes.items()
        }
    finally:
        for f in granted:
            reader.unsubscribe(f)


@pytest.mark.parametrize("role", list(USER))
def test_each_role_reads_only_what_the_contract_lets_it(role, clients) -> None:
    """It may subscribe exactly where it may read, and gets exactly that."""
    traffic = {topic: WRITER[kind] for kind, topic in KINDS.items()}
    fence_kind = sorted(READ[role])[0] if READ[role] else "model"
    filters = {kind: filter_for(role, kind, topic) for kind, topic in KINDS.items()}
    got = _fenced(clients[USER[role]], clients, list(filters.values()), traffic, fence_kind)
    subscribed = {kind for kind, f in filters.items() if got[f] is not None}
    delivered = {kind for kind, f in filters.items() if got[f] and KINDS[kind] in got[f]}
    assert subscribed == delivered == READ[role]


@pytest.mark.parametrize(
    "filt",
    [
        "#",
        f"{T.prefix}/#",
        f"{T.prefix}/result/+",
        f"{T.prefix}/plan/+/+",
        f"{T.prefix}/edge/+/+/+",
        f"$share/x/{T.prefix}/edge/+/+/+",
        f"$share/edge/{T.prefix}/result/{OTHER}",
        f"{T.prefix}/telemetry/+/+",
    ],
)
def test_a_device_may_not_subscribe_through_wildcards_or_groups(filt, clients) -> None:
    """Refused at SUBSCRIBE, not only filtered at delivery (see test_attacks.py)."""
    with pytest.raises(BrokerError, match="Not authorized"):
        clients[OTHER].subscribe(filt, Inbox(filt), qos=1)


def test_inference_over_tls_with_an_intruder_device_next_door(
    secure_broker, real_pool, clients
) -> None:
    """A real request through edge and cloud; another device can neither see nor forge."""
    mv = real_pool.get("mnist-cnn")
    pool = {"pool": real_pool.root}
    spy = clients[OTHER]
    seen = Inbox("what the intruder gets")
    spy.subscribe(T.result(OTHER), seen, qos=1)
    try:
        with (
            edge_worker(secure_broker.user_settings("edge", **pool), "sec-edge"),
            Worker(secure_broker.user_settings("cloud", **pool), "cloud", "sec-cloud"),
            Device(
                secure_broker.user_settings(RUNNER, **pool),
                RUNNER,
                make_plan(mv, 4, "raw", cloud_cut=7),
            ) as dev,
        ):
            answer = dev.infer(DIGITS[0])
            assert answer.tier == "cloud"
            for topic in (
                T.result(RUNNER),
                T.request("edge", mv.name, 4, RUNNER),
                T.plan(RUNNER, mv.name),
            ):
                with pytest.raises(BrokerError, match="Not authorized"):
                    spy.publish(topic, b"forged", qos=1, wait=5)
            assert dev.infer(DIGITS[1]).tier == "cloud"  # still served, nothing forged in
    finally:
        spy.unsubscribe(T.result(OTHER))
    assert seen.items == []


def test_a_device_whose_id_is_not_its_user_is_refused_at_connect(secure_broker, real_pool) -> None:
    """Logged in as RUNNER but named OTHER: the broker binds RUNNER to its own client id,
    so the device fails at once, saying why, not at its first request."""
    mv = real_pool.get("mnist-cnn")
    cfg = secure_broker.user_settings(RUNNER, pool=real_pool.root)
    with pytest.raises(BrokerError, match="Not authorized") as refused:
        Device(cfg, OTHER, make_plan(mv, 4, "raw"), timeout_s=30).start()
    assert "user name" in str(refused.value)


def _login(**fields) -> MqttClient:
    return MqttClient(
        Settings(_env_file=None, **fields).connection("login-" + uuid.uuid4().hex[:6])
    )


def test_anonymous_and_wrong_passwords_are_refused_on_both_listeners(secure_broker, secure_dir):
    tls = {"broker": secure_broker.tls_url, "ca_file": secure_dir.ca}
    for fields in (
        {"broker": secure_broker.address},
        {"broker": secure_broker.address, "username": ME, "password": "wrong"},
        tls,
        {**tls, "username": ME, "password": "wrong"},
        {**tls, "username": "nobody", "password": "x"},
    ):
        with pytest.raises(BrokerError, match=r"refused|Not authorized|Bad user"):
            _login(**fields).connect(timeout=5)


def test_tls_with_the_wrong_ca_is_refused(secure_broker, tmp_path) -> None:
    stranger = SecureDir.init(tmp_path / "other-ca")
    settings = secure_broker.user_settings(ME).model_copy(update={"ca_file": stranger.ca})
    with pytest.raises(BrokerError, match="certificate verify failed"):
        MqttClient(settings.connection("wrong-ca")).connect(timeout=5)


def test_an_added_device_logs_in_at_once_through_the_control_topic(
    secure_broker, secure_dir
) -> None:
    password = secure_dir.add_device("dev-late")
    secure_dir.tell_broker("dev-late", password, secure_broker.tls_url)
    late = secure_broker.user_settings("dev-late")
    MqttClient(late.connection("dev-late")).connect(timeout=5).close()
    with pytest.raises(BrokerError, match="Not authorized"):  # bound to its id, as all
        MqttClient(late.connection("dev-late-2")).connect(timeout=5)
    with pytest.raises(BrokerError, match="already exists"):
        secure_dir.tell_broker("dev-late", password, secure_broker.tls_url)
    with pytest.raises(UserError, match="exists already"):
        secure_dir.add_device("dev-late")
    with pytest.raises(UserError, match="service role"):
        secure_dir.add_device("planner")


def test_password_hashes_are_the_plugins_own_format() -> None:
    """PBKDF2-SHA512, 64 bytes, 101 rounds, 12-byte salt, base64: a vector from Python's
    own hashlib, and a real broker lets users in with them (every test above)."""
    doc = hash_password("secret", bytes(range(12)))
    assert doc["salt"] == "AAECAwQFBgcICQoL" and doc["iterations"] == 101
    assert len(base64.b64decode(doc["password"])) == 64
    assert hash_password("secret", bytes(range(12))) == doc
    assert hash_password("Secret", bytes(range(12))) != doc


def test_secrets_stay_out_of_settings_reprs_and_addresses() -> None:
    cfg = Settings(_env_file=None, broker="mqtts://cam:hunter2@example.org", password_file=None)
    assert cfg.broker_url.password == "hunter2" and cfg.broker_url.port == 8883
    assert "hunter2" not in repr(cfg) + cfg.where + str(cfg.broker_url) + repr(cfg.broker_url)
    other = Settings(_env_file=None, broker="mqtt://h:1884", username="u", password="pw")
    assert (other.broker_url.username, other.broker_url.password, other.broker_url.tls) == (
        "u",
        "pw",
        False,
    )
    assert "pw" not in repr(other)


def test_the_password_file_setting_reads_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    cfg = Settings(_env_file=None, broker="mqtt://u@h:1", password_file=secret)
    assert cfg.broker_url.password == "from-a-file"
