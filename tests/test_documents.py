"""Typed, versioned documents: every example in docs/topics.md parses; bad ones are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from splitmq.shared.errors import UserError, WireError
from splitmq.shared.model.calibration import CalibrationTable
from splitmq.shared.model.profile import Profile
from splitmq.shared.protocol.announce import ModelAnnouncement
from splitmq.shared.protocol.document import Document
from splitmq.shared.protocol.plan import Plan, load_plan_file, parse_plan
from splitmq.shared.protocol.reading import Heard, Rejected, read_plan, read_telemetry
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.protocol.telemetry import (
    DeviceTelemetry,
    Offline,
    PlannerTelemetry,
    WorkerTelemetry,
    parse_telemetry,
)
from splitmq.shared.protocol.topics import Topics

DOC = Path(__file__).parent.parent / "docs" / "topics.md"
KINDS: dict[str, type[Document]] = {
    "Worker telemetry": WorkerTelemetry,
    "Device telemetry": DeviceTelemetry,
    "Planner telemetry": PlannerTelemetry,
    "Plan": Plan,
    "Model announcement": ModelAnnouncement,
    "Profile": Profile,
    "Calibration table": CalibrationTable,
}


def _examples() -> dict[str, dict]:
    """The first ```json block under each ``### <kind>`` heading of the Documents section."""
    text = DOC.read_text()
    section = text[text.index("## Documents") : text.index("## Sizes and queues")]
    found = {}
    for heading, body in re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", section, re.M | re.S):
        block = re.search(r"```json\n(.*?)```", body, re.S)
        if block:
            found[heading.strip()] = json.loads(block.group(1))
    return found


EXAMPLES = _examples()


def test_every_documented_kind_has_an_example() -> None:
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_documented_examples_parse_and_round_trip(kind: str) -> None:
    raw = EXAMPLES[kind]
    doc = KINDS[kind].parse(json.dumps(raw).encode(), kind)
    assert doc.v == 1
    again = json.loads(doc.to_json())
    assert KINDS[kind].parse(again) == doc
    assert set(again) == set(raw)  # nothing documented is dropped, nothing undocumented added


@pytest.mark.parametrize("kind", ["Worker telemetry", "Device telemetry", "Planner telemetry"])
def test_telemetry_is_typed_by_its_role(kind: str) -> None:
    doc = parse_telemetry(json.dumps(EXAMPLES[kind]).encode())
    assert type(doc) is KINDS[kind]


def test_the_last_will_parses_as_offline() -> None:
    assert parse_telemetry(b'{"status":"offline"}') == Offline()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"v": 2}, "v"),
        ({"v": None}, "v"),
        ({"rps": -1}, "rps"),
        ({"forwarded": {"fog": 1}}, "forwarded"),
        ({"threads": 0}, "threads"),
        (
            {
                "service": [
                    {"model": "m", "version": 1, "from": 0, "p50_ms": 1, "p95_ms": 1, "n": 0}
                ]
            },
            "service.0.n",
        ),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_worker_telemetry_names_the_field(change: dict, field: str) -> None:
    raw = {**EXAMPLES["Worker telemetry"], **change}
    with pytest.raises(WireError, match=rf"^telemetry: {re.escape(field)}"):
        parse_telemetry(json.dumps(raw).encode())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"link": {"uplink_bps": 0, "rtt_ms": 1, "age_s": 1}}, "link.uplink_bps"),
        ({"speed": 1.5}, "speed"),
        ({"battery": 2}, "battery"),
        ({"wants": {"objective": "fastest"}}, "wants.objective"),
        ({"plan": {"model": "m"}}, "plan.cut"),
    ],
)
def test_bad_device_telemetry_names_the_field(change: dict, field: str) -> None:
    raw = {**EXAMPLES["Device telemetry"], **change}
    with pytest.raises(WireError, match=rf"^telemetry: {re.escape(field)}"):
        parse_telemetry(json.dumps(raw).encode())


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"[1, 2]", b'{"role": "fog"}', b'{"status": "gone"}']
)
def test_unreadable_telemetry_is_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError, match=r"^telemetry: "):
        parse_telemetry(payload)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"codec": "jpeg:85"}, "it needs cut 0"),
        ({"codec": "zip"}, "unknown codec"),
        ({"route": [{"tier": "fog"}]}, "route"),
        ({"exit": 1.5}, "exit"),
        ({"device": "cam/+"}, "device"),
        ({"v": 0}, "v"),
    ],
)
def test_bad_plans_are_user_errors_naming_the_problem(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_plan({**EXAMPLES["Plan"], **change})


def test_a_plan_file_round_trips(tmp_path: Path) -> None:
    plan = Plan.parse(EXAMPLES["Plan"])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_json_dict()))
    assert load_plan_file(path) == plan
    path.write_text("{")
    with pytest.raises(UserError, match="not JSON"):
        load_plan_file(path)


TOPICS = Topics("site/splitmq/v1")
WORKER = json.dumps(EXAMPLES["Worker telemetry"]).encode()  # edge edge-1
PLAN = json.dumps(EXAMPLES["Plan"]).encode()  # cam-1, efficientnet-lite0-ee


def test_the_reader_hears_telemetry_wills_and_cleared_topics() -> None:
    topic = TOPICS.telemetry("edge", "edge-1")
    heard = read_telemetry(TOPICS, topic, WORKER)
    assert heard == Heard(("edge", "edge-1"), WorkerTelemetry.parse(WORKER))
    # A Last Will names nobody: it is the topic's role going offline.
    will = read_telemetry(TOPICS, topic, b'{"status":"offline"}')
    assert will == Heard(("edge", "edge-1"), Offline())
    assert read_telemetry(TOPICS, topic, b"") == Heard(("edge", "edge-1"), None)


@pytest.mark.parametrize(
    ("topic", "payload", "why", "key"),
    [
        ("site/splitmq/v1/telemetry/edge", WORKER, "must be", None),
        ("other/splitmq/v1/telemetry/edge/edge-1", WORKER, "must be", None),
        ("site/splitmq/v1/telemetry/edge/a b", b"", "role and id", None),
        ("site/splitmq/v1/telemetry/edge/edge-1", b"{not json", "not JSON", ("edge", "edge-1")),
        ("site/splitmq/v1/telemetry/edge/edge-2", WORKER, "forged", ("edge", "edge-2")),
        ("site/splitmq/v1/telemetry/cloud/edge-1", WORKER, "forged", ("cloud", "edge-1")),
    ],
)
def test_the_reader_rejects_telemetry_its_topic_does_not_vouch_for(
    topic: str, payload: bytes, why: str, key: tuple[str, str] | None
) -> None:
    heard = read_telemetry(TOPICS, topic, payload)
    assert isinstance(heard, Rejected) and heard.topic == topic and heard.key == key
    assert why in heard.why


def test_the_reader_hears_plans_and_cleared_plans() -> None:
    topic = TOPICS.plan("cam-1", "efficientnet-lite0-ee")
    plan = Plan.parse(PLAN)
    key = ("cam-1", "efficientnet-lite0-ee")
    assert read_plan(TOPICS, topic, PLAN) == Heard(key, plan)
    anyones = plan.model_copy(update={"device": None})  # a plan for any device
    assert read_plan(TOPICS, topic, anyones.to_json()) == Heard(key, anyones)
    assert read_plan(TOPICS, topic, b"") == Heard(key, None)


@pytest.mark.parametrize(
    ("device", "model", "payload", "why"),
    [
        ("cam-2", "efficientnet-lite0-ee", PLAN, "forged"),
        ("cam-1", "efficientnet-lite0", PLAN, "forged"),
        ("cam-1", "efficientnet-lite0-ee", b"[]", "valid dictionary"),
    ],
)
def test_the_reader_rejects_plans_for_another_device_or_model(
    device: str, model: str, payload: bytes, why: str
) -> None:
    topic = TOPICS.plan(device, model)
    heard = read_plan(TOPICS, topic, payload)
    assert isinstance(heard, Rejected) and heard.key == (device, model) and why in heard.why
    bad_topic = read_plan(TOPICS, f"{topic}/extra", PLAN)
    assert isinstance(bad_topic, Rejected) and bad_topic.key is None


def test_calibration_reads_what_encoders_need() -> None:
    table = CalibrationTable.parse(EXAMPLES["Calibration table"])
    assert table.params(1, "q4+zstd") == {"lo": -0.5, "hi": 2.25}
    assert table.params(1, "q4c") == {"lo": [-0.4, -0.6], "hi": [2.0, 2.5]}
    assert table.params(1, "q2") is None  # the message's own min/max does better
    assert table.params(1, "clip4") is None  # fixed range, never calibrated
    assert table.params(3, "q4") is None  # a cut not calibrated
    row = table.row(0, "u8")
    assert row is not None and row.agreement == 1.0
    assert table.row(0, "jpeg:85") is None  # never claim what was not measured


def test_the_captured_result_is_a_valid_result() -> None:
    """The result printed in full in the captured session is what the schema says."""
    section = DOC.read_text().split("## Captured demo session", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "no full result in the captured demo session"
    result = unpack_result(block.group(1).strip().encode())
    assert len(result.top) == 5 and all(round(t.score, 6) == t.score for t in result.top)
    assert [hop.tier for hop in result.latency][-1] == "cloud"
