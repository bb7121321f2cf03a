"""Early exits on labelled data: temperature scaling, the exit report, `splitmq exits`, and
a labelled device source, with the multi-exit Fashion-MNIST model `make models` trains."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from clitools import cli_env, run_cli

from splitmq.edge.worker import edge_worker
from splitmq.shared.errors import UserError
from splitmq.shared.offline import datasets
from splitmq.shared.offline.exit_report import passes, score
from splitmq.shared.offline.temperature import ece, fit_temperature
from splitmq.shared.runtime.worker import Worker

MODEL = "fashion-mnist-ee"


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    """Labels drawn from softmax(z / 2.5): the fitted T is 2.5 and the ECE drops."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=(20_000, 10))
    p = np.exp(z / 2.5)
    p /= p.sum(-1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in p])
    t = fit_temperature(z, labels)
    assert abs(t - 2.5) < 0.15
    assert ece(z / t, labels) < ece(z, labels) / 3


def test_entropy_and_max_softmax_scores_order_samples_alike() -> None:
    sure, unsure = np.array([[10.0, 0, 0]]), np.array([[1.0, 0.9, 0.8]])
    assert passes(score(sure, "max_softmax"), "max_softmax", 0.99)[0]
    assert not passes(score(unsure, "max_softmax"), "max_softmax", 0.5)[0]
    assert passes(score(sure, "entropy"), "entropy", 0.01)[0]
    assert not passes(score(unsure, "entropy"), "entropy", 0.9)[0]


def test_idx_files_are_read_and_bad_ones_refused(tmp_path, monkeypatch) -> None:
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9])
    (tmp_path / "x.gz").write_bytes(gzip.compress(good))
    assert datasets._idx(tmp_path / "x.gz", 1).tolist() == [7, 8, 9]
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + good[4:]))
    with pytest.raises(UserError, match="not an IDX file of 1-d"):
        datasets._idx(tmp_path / "bad.gz", 1)
    with pytest.raises(UserError, match="install Debian's dataset-fashion-mnist"):
        datasets._idx(tmp_path / "missing.gz", 1)


@pytest.fixture(scope="module")
def report(real_pool):
    found = real_pool.get(MODEL).manifest.exits
    assert found is not None, "make models measures the exits"
    return found


def test_the_final_exit_is_accurate_and_the_exits_calibrated(report) -> None:
    assert report.samples == 10_000 and report.final_accuracy >= 0.91
    assert [e.name for e in report.exits] == ["exit1", "exit2"]
    for e in report.exits:
        # calibrated after scaling; a head that was off by more than 0.02 is at least halved
        # (scaling minimises NLL, not ECE: one already calibrated may move a little)
        assert e.ece_after < 0.02, e
        assert e.ece_before <= 0.02 or e.ece_after <= e.ece_before / 2, e


def test_curves_trade_exits_for_accuracy(report) -> None:
    for curve in report.curves:
        shares = [sum(rates) for rates in curve.exit_rate]
        stricter = shares if curve.policy == "entropy" else shares[::-1]
        assert stricter == sorted(stricter), curve.policy  # a stricter threshold exits fewer
        assert all(0 <= a <= 1 for a in curve.accuracy)
        best = max(curve.accuracy)
        assert best >= report.final_accuracy - 0.01


def test_exits_cli_json_has_the_documented_keys(real_pool) -> None:
    r = run_cli("exits", MODEL, "--json", env=cli_env(pool=real_pool.root))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"model", "exits", "curves", "final_accuracy"} <= set(doc)
    assert set(doc["exits"][0]) == {"name", "cut", "temperature", "ece_before", "ece_after"}
    assert {"policy", "thresholds", "exit_rate", "accuracy"} <= set(doc["curves"][0])
    plain = run_cli("exits", "mnist-cnn", env=cli_env(pool=real_pool.root))
    assert plain.returncode == 2 and "no exits measured" in plain.stderr


def test_a_labelled_source_reports_accuracy_through_edge_and_cloud(settings, real_pool):
    """300 test images through the edge's exits and the cloud: the summary counts right
    answers against the dataset's labels, and the edge answers the confident ones."""
    cfg = settings.model_copy(update={"pool": real_pool.root})
    mv = real_pool.get(MODEL)
    last_exit = max(e.cut for e in mv.manifest.exits.exits)
    with edge_worker(cfg, "fm-edge"), Worker(cfg, "cloud", "fm-cloud"):
        r = run_cli(
            "device", "--model", MODEL, "--source", "fashion-mnist:test", "--frames", "300",
            "--cut", "1", "--cloud-cut", str(last_exit), "--exit", "0.9", "--window", "8",
            "--json", env=cli_env(cfg),
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    *rows, summary = [json.loads(line) for line in r.stdout.splitlines()]
    labels = datasets.fashion_mnist("test")[1][:300]
    right = sum(row["index"] == labels[row["frame"]] for row in rows)
    assert summary["accuracy"] == round(right / 300, 4) and summary["accuracy"] > 0.85
    assert summary["by_tier"].get("edge", 0) > 100 and summary["by_tier"].get("cloud", 0) > 0
    assert summary["cloud_bytes"] == sum(row["cloud_bytes"] for row in rows) > 0


#: A slow device on a fast link, a far cloud (a trip ~200 ms): at some edge speed the whole
#: model at the edge and a trip to the cloud cost alike, and answering at an exit and
#: sending only the rest on saves. Which speed that is depends on the profile measured on
#: this host, so the test looks for it among these.
SITUATION = {"uplink": "100mbit", "rtt": "2ms", "device_speed": 0.001, "cloud_link": "10mbit/200ms"}
EDGE_SPEEDS = [0.0001 * 1.5**i for i in range(16)]


def exit_situation(mv, target: float) -> float:
    """An edge speed at which the planner answers at an exit for ``target``."""
    from splitmq.api import plan, wants

    for speed in EDGE_SPEEDS:
        asked = wants(accuracy_target=target)
        chosen = plan(mv, **SITUATION, edge_speed=speed, asked=asked).plan
        if chosen.route and chosen.route[0].exit is not None:
            return speed
    raise AssertionError(f"no edge speed in {EDGE_SPEEDS} makes an exit worth it")


def exits_of(mv, plan: dict) -> tuple[str, ...]:
    """The exit heads a plan's edge hop computes (after the device's cut, up to its stop)."""
    stop = plan["route"][0]["to"]
    return tuple(e.name for e in mv.manifest.exits.exits if plan["cut"] < e.cut <= stop)


@pytest.mark.parametrize("target", [0.9, 0.915])
def test_the_planner_picks_the_fastest_exit_threshold_meeting_an_accuracy_target(
    real_pool, target
) -> None:
    """Lower thresholds answer more at the edge (faster here) but less accurately: the plan
    takes the lowest threshold whose measured accuracy meets the target, and no plan it
    offers has an exit threshold below the target on its curve."""
    mv = real_pool.get(MODEL)
    curves = {tuple(c.outputs): c for c in mv.manifest.calibration.exits}
    speed = exit_situation(mv, target)
    flags = ["--uplink", "100mbit", "--rtt", "2ms", "--device-speed", "0.001"]
    flags += ["--cloud-link", "10mbit/200ms", "--edge-speed", str(speed)]
    r = run_cli("plan", MODEL, *flags, "--accuracy-target", str(target), "--json",
                env=cli_env(pool=real_pool.root))  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    offered = [doc["plan"], *doc["alternatives"]]
    for plan in offered:
        hop = plan["route"][0] if plan["route"] else None
        if hop and hop["exit"] is not None:
            curve = curves[exits_of(mv, plan)]
            assert curve.accuracy[curve.thresholds.index(hop["exit"])] >= target
    hop = doc["plan"]["route"][0]
    assert hop["exit"] is not None, doc["plan"]["reason"]
    curve = curves[exits_of(mv, doc["plan"])]
    meeting = [t for t, a in zip(curve.thresholds, curve.accuracy, strict=True) if a >= target]
    assert hop["exit"] == min(meeting)  # within its exits, the one answering most
    assert "exits ≥" in doc["plan"]["reason"]
