"""Security against a real mosquitto run with ``splitmq secure`` files: who may do what.

The access matrix below is the topic contract written out by hand (docs/security.md),
not read from ``shared.protocol.access``, so a wrong grant there fails here. Every
role tries every kind of topic both ways over TLS: what the matrix allows is
delivered, what it forbids is refused by the broker (PUBACK or SUBACK "not
authorized") and never reaches anyone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import Inbox, eventually

from splitmq.broker.launcher import Broker
from splitmq.broker.secure import SecureDir, hash_password
from splitmq.device.runtime import Device, InferenceFailed
from splitmq.edge.worker import edge_worker
from splitmq.shared.errors import BrokerError, UserError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

ME, OTHER = "dev-a", "dev-b"
T = Topics()

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
}
ALL = set(KINDS)
REQUESTS = {k for k in KINDS if "request" in k}
TELEMETRY = {k for k in KINDS if "telemetry" in k}
#: role -> the kinds it may publish to / subscribe to: the contract, by hand.
WRITE = {
    "device": {"edge request, own", "cloud request, own", "probe, own", "device telemetry, own"}
    | {"frame, own"},
    "edge": {"cloud request, own", "cloud request, other's", "edge telemetry"}
    | {"result, own", "result, other's", "error, own", "error, other's"},
    "cloud": {"result, own", "result, other's", "error, own", "error, other's"}
    | {"cloud telemetry"},
    "planner": {"plan, own", "plan, other's", "planner telemetry"},
    "monitor": set(),
    "operator": {"model"},
}
READ = {
    "device": {"result, own", "error, own", "plan, own"},
    "edge": {"edge request, own", "edge request, other's", "frame, own", "frame, other's"}
    | {"model"},
    "cloud": {"cloud request, own", "cloud request, other's", "model"},
    "planner": TELEMETRY | {"plan, own", "plan, other's", "model"},
    "monitor": ALL,
    "operator": {"model"},
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
}
DIGITS = mnist_digits()[0]
USER = {
    "device": ME,
    "edge": "edge",
    "cloud": "cloud",
    "planner": "planner",
    "monitor": "monitor",
    "operator": "operator",
}


@pytest.fixture(scope="module")
def secure_dir(tmp_path_factory: pytest.TempPathFactory) -> SecureDir:
    return SecureDir.init(tmp_path_factory.mktemp("secure"), devices=[ME, OTHER])


@pytest.fixture(scope="module")
def secure_broker(secure_dir: SecureDir) -> Iterator[Broker]:
    with Broker(secure=secure_dir.root) as running:
        yield running


@pytest.fixture(scope="module")
def clients(secure_broker: Broker) -> Iterator[dict[str, MqttClient]]:
    made = {
        user: MqttClient(
            secure_broker.user_settings(user).connection(f"{user}-{uuid.uuid4().hex[:6]}")
        )
        for user in (*USER.values(), OTHER)
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
    fence the reader may read; once the fence is in, return what each filter got.

    Mosquitto routes a message before it acknowledges it, so whatever it would deliver
    for the traffic is queued for the reader ahead of the fence."""
    boxes = {f: Inbox(f"messages on {f}") for f in filters}
    for f, box in boxes.items():
        reader.subscribe(f, box, qos=1)
    try:
        for topic, writer in traffic.items():
            clients[writer].publish(topic, topic.encode(), qos=1, wait=5)
        clients[WRITER[fence_kind]].publish(KINDS[fence_kind], b"fence", qos=1, wait=5)
        eventually(
            lambda: any(m.payload == b"fence" for b in boxes.values() for m in b.items), "fence"
        )
        return {
            f: {m.payload.decode() for m in b.items if m.payload != b"fence"}
            for f, b in boxes.items()
        }
    finally:
        for f in boxes:
            reader.unsubscribe(f)


@pytest.mark.parametrize("role", list(USER))
def test_each_role_reads_only_what_the_contract_lets_it(role, clients) -> None:
    traffic = {topic: WRITER[kind] for kind, topic in KINDS.items()}
    fence_kind = sorted(READ[role])[0]
    got = _fenced(clients[USER[role]], clients, list(KINDS.values()), traffic, fence_kind)
    delivered = {kind for kind, topic in KINDS.items() if topic in got[topic]}
    assert delivered == READ[role]


@pytest.mark.parametrize(
    "filt",
    [
        "#",
        f"{T.prefix}/#",
        f"{T.prefix}/result/+",
        f"{T.prefix}/plan/+/+",
        f"{T.prefix}/edge/+/+/+",
        f"$share/x/{T.prefix}/edge/+/+/+",
        f"{T.prefix}/telemetry/+/+",
    ],
)
def test_a_device_reads_nothing_of_another_through_wildcards(filt, clients) -> None:
    mine = {topic: WRITER[kind] for kind, topic in KINDS.items() if "other's" not in kind}
    got = _fenced(
        clients[OTHER], clients, [filt, KINDS["result, other's"]], mine, "result, other's"
    )
    assert got[filt] == set()


def test_inference_over_tls_with_an_intruder_device_next_door(secure_broker, real_pool) -> None:
    """A real request through edge and cloud; another device can neither see nor forge."""
    mv = real_pool.get("mnist-cnn")
    pool = {"pool": real_pool.root}
    spy = MqttClient(secure_broker.user_settings(OTHER, **pool).connection(OTHER)).connect(
        timeout=5
    )
    seen = Inbox("what the intruder gets")
    spy.subscribe(T.result(OTHER), seen, qos=1)
    try:
        with (
            edge_worker(secure_broker.user_settings("edge", **pool), "sec-edge"),
            Worker(secure_broker.user_settings("cloud", **pool), "cloud", "sec-cloud"),
            Device(
                secure_broker.user_settings(ME, **pool), ME, make_plan(mv, 4, "raw", cloud_cut=7)
            ) as dev,
        ):
            answer = dev.infer(DIGITS[0])
            assert answer.tier == "cloud"
            for topic in (T.result(ME), T.request("edge", mv.name, 4, ME), T.plan(ME, mv.name)):
                with pytest.raises(BrokerError, match="Not authorized"):
                    spy.publish(topic, b"forged", qos=1, wait=5)
            assert dev.infer(DIGITS[1]).tier == "cloud"  # still served, nothing forged in
    finally:
        spy.close()
    assert seen.items == []


def test_a_device_whose_id_is_not_its_user_gets_not_authorized(secure_broker, real_pool) -> None:
    """A device logged in as ME but named OTHER in its topics: an error, not a timeout."""
    mv = real_pool.get("mnist-cnn")
    cfg = secure_broker.user_settings(ME, pool=real_pool.root)
    with (
        Device(cfg, OTHER, make_plan(mv, 4, "raw"), timeout_s=30) as dev,
        pytest.raises(InferenceFailed) as failed,
    ):
        dev.infer(DIGITS[0])
    assert failed.value.code == "not_authorized", failed.value


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


def test_added_device_logs_in_after_a_reload(secure_broker, secure_dir) -> None:
    secure_dir.add_device("dev-late")
    secure_broker.reload()  # mosquitto rereads passwd and acl on SIGHUP

    def logs_in() -> bool:
        try:
            MqttClient(secure_broker.user_settings("dev-late").connection("dev-late")).connect(
                timeout=5
            ).close()
        except BrokerError:
            return False
        return True

    eventually(logs_in, "dev-late to be let in")
    with pytest.raises(UserError, match="exists already"):
        secure_dir.add_device("dev-late")
    with pytest.raises(UserError, match="service role"):
        secure_dir.add_device("planner")


def test_password_hashes_are_mosquittos_own_format() -> None:
    """A vector from mosquitto_passwd's algorithm: PBKDF2-SHA512, 101 rounds, 12-byte salt."""
    digest = hash_password("secret", bytes(range(12)))
    assert digest.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert hash_password("secret", bytes(range(12))) == digest
    assert hash_password("Secret", bytes(range(12))) != digest


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
