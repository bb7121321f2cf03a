"""The topic tree: contract strings, build/parse round trip, injection refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitmq.shared.errors import UserError, WireError
from splitmq.shared.protocol.topics import RequestTopic, Topics
from splitmq.shared.settings import Settings

IDS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
MODELS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


def test_default_tree_matches_the_contract() -> None:
    t = Topics()
    assert t.edge_request("effnet-lite0", 5, "cam-1") == "splitmq/v1/edge/effnet-lite0/5/cam-1"
    assert t.cloud_request("effnet-lite0", 12, "cam-1") == "splitmq/v1/cloud/effnet-lite0/12/cam-1"
    assert t.result("cam-1") == "splitmq/v1/result/cam-1"
    assert t.error("cam-1") == "splitmq/v1/error/cam-1"
    assert t.telemetry("edge", "e1") == "splitmq/v1/telemetry/edge/e1"
    assert t.plan("cam-1", "mnist.v2") == "splitmq/v1/plan/cam-1/mnist.v2"
    assert t.edge_requests_shared() == "$share/edge/splitmq/v1/edge/+/+/+"
    assert t.cloud_requests_shared() == "$share/cloud/splitmq/v1/cloud/+/+/+"
    assert t.telemetry_filter() == "splitmq/v1/telemetry/+/+"
    assert t.plans_filter("cam-1") == "splitmq/v1/plan/cam-1/+"
    assert t.everything() == "splitmq/v1/#"


@given(
    tier=st.sampled_from(["edge", "cloud"]), model=MODELS, cut=st.integers(0, 999_999), device=IDS
)
def test_request_round_trip(tier: str, model: str, cut: int, device: str) -> None:
    t = Topics("test/x/splitmq/v1")
    topic = t.request(tier, model, cut, device)  # type: ignore[arg-type]
    assert t.parse_request(topic) == RequestTopic(tier, model, cut, device)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["", "a/b", "+", "#", "cam+1", "a b", "x" * 65, "ü", None])
def test_bad_device_ids_are_refused_when_building(device: str) -> None:
    t = Topics()
    with pytest.raises(UserError, match="invalid device id"):
        t.edge_request("m", 1, device)
    with pytest.raises(UserError, match="invalid device id"):
        t.result(device)


@pytest.mark.parametrize(
    "model", ["", ".", "..", ".hidden", "-m", "_m", "a/b", "m#", "m+", "x" * 65]
)
def test_bad_model_names_are_refused(model: str) -> None:
    with pytest.raises(UserError, match="invalid model name"):
        Topics().cloud_request(model, 1, "cam")


@pytest.mark.parametrize("cut", [-1, True, "3", 1.0, 1_000_000])
def test_bad_cuts_are_refused(cut: object) -> None:
    with pytest.raises(UserError, match="invalid cut"):
        Topics().edge_request("m", cut, "cam")  # type: ignore[arg-type]


def test_other_ids_are_checked_too() -> None:
    t = Topics()
    with pytest.raises(UserError, match="invalid role"):
        t.telemetry("edge/+", "e1")
    with pytest.raises(UserError, match="invalid id"):
        t.telemetry("edge", "#")
    with pytest.raises(UserError, match="invalid tier"):
        t.request("fog", "m", 1, "cam")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="invalid share group"):
        t.shared_requests("edge", group="a/b")


@pytest.mark.parametrize("prefix", ["", "/a", "a/", "a//b", "a/+/b", "a/#", "$SYS/x", "a b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(UserError, match="invalid topic prefix"):
        Topics(prefix)


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("other/v1/edge/m/1/cam", "not under prefix"),
        ("splitmq/v1/edge/m/1", "must be"),
        ("splitmq/v1/edge/m/1/cam/extra", "must be"),
        ("splitmq/v1/fog/m/1/cam", "unknown tier 'fog'"),
        ("splitmq/v1/edge/../1/cam", "bad model name"),
        ("splitmq/v1/edge/m/07/cam", "bad cut '07'"),
        ("splitmq/v1/edge/m/-1/cam", "bad cut"),
        ("splitmq/v1/edge/m/x/cam", "bad cut"),
        ("splitmq/v1/edge/m/1/", "bad device id"),
        ("splitmq/v1/edge/m/1/c+m", "bad device id"),
        ("splitmq/v1/result/cam", "must be"),
    ],
)
def test_parse_names_the_problem(topic: str, problem: str) -> None:
    with pytest.raises(WireError, match=problem.replace("+", r"\+")):
        Topics().parse_request(topic)


def test_topics_follow_the_settings_prefix() -> None:
    settings = Settings(_env_file=None, topic_prefix="lab/a1/splitmq/v1")  # type: ignore[call-arg]
    assert settings.topics.result("d") == "lab/a1/splitmq/v1/result/d"
