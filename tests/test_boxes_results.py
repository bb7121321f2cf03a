"""A detector's and a raw model's answers in the results store, SQLite and a real
PostgreSQL: from a real worker on the session's broker (the tiny real detector of
test_boxes_model) and made by hand, kept with their boxes and the raw outputs'
summaries (never their values), listed by `splitmq results`, and a store made before
the boxes migrated to them with its rows kept. test_results has the store's helpers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from clitools import cli_env, run_cli
from kit import hop_record, make_request
from test_boxes_model import RAW_TOML, add_squares, frame
from test_results import answer, raw, versions

from splitmq.cloud.results import Recorder, ResultsStore, StoreUrl
from splitmq.cloud.results import store as store_module
from splitmq.cloud.results.schema import COLUMNS, MIGRATIONS, row
from splitmq.shared.codecs import encode
from splitmq.shared.model.outputs import raw_output
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.preprocess import model_input
from splitmq.shared.protocol.results import (
    Box,
    RawOutput,
    Result,
    unpack_result,
)
from splitmq.shared.protocol.wire import Hop, pack_request
from splitmq.shared.runtime.answers import answer_to
from splitmq.shared.runtime.executor import Answered
from splitmq.shared.runtime.worker import Worker


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A new, empty store: a SQLite file, or a database of the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("postgres").new_database()


def ask(cfg, make_client, inbox, mv, device: str, image: np.ndarray) -> Result:
    """One request from ``device`` to the cloud, from cut 0: the answer it receives."""
    x = model_input(image, mv)
    request = make_request(
        (Hop("cloud"),), start=0, model=mv, device=device, tensor=encode(x, "raw")
    )
    answers = inbox(f"the answer to {device}")
    client = make_client(f"ask-{device}")
    client.subscribe(cfg.topics.result(device), answers, qos=1)
    client.publish(cfg.topics.request("cloud", mv.name, 0, device), pack_request(request), qos=1)
    return unpack_result(answers.wait(1, 20)[0].payload)


def test_a_worker_records_boxes_and_raw_summaries(url, settings, make_client, inbox, tmp_path):
    pool = ModelPool(tmp_path / "pool")
    detector = add_squares(pool, tmp_path / "det")
    rawmodel = add_squares(pool, tmp_path / "raw", "raw-squares", RAW_TOML)
    cfg = settings.model_copy(update={"pool": pool.root})
    two = frame(128, 96, [(56, 32, 64, 40), (40, 24, 48, 32)])
    with Recorder(url) as recorder, Worker(cfg, "cloud", "box-cloud", on_result=recorder.add):
        boxed = ask(cfg, make_client, inbox, detector, "cam-det", two)
        tensors = ask(cfg, make_client, inbox, rawmodel, "cam-raw", frame(32, 32, [(4, 4, 8, 8)]))
    assert recorder.counts() == {"recorded": 2, "failed": 0, "dropped": 0}
    assert len(boxed.boxes) == 2 and boxed.top == ()
    assert [o.name for o in tensors.outputs] == ["heatmap", "size"] and tensors.top == ()
    with ResultsStore(url) as db:
        rows = {r["device"]: r for r in db.query()}
    det, raw = rows["cam-det"], rows["cam-raw"]
    assert det["boxes"] == [
        {"index": b.index, "label": "square", "score": b.score, "box": list(b.box)}
        for b in boxed.boxes
    ]
    assert (det["top"], det["outputs"], det["worker"]) == ([], [], "box-cloud")
    assert raw["outputs"] == [
        {"name": o.name, "shape": list(o.shape), "dtype": o.dtype, "min": o.min,
         "max": o.max, "mean": o.mean}
        for o in tensors.outputs
    ]  # fmt: skip
    assert (raw["top"], raw["boxes"]) == ([], [])

    table = run_cli("results", "--results", url, env=cli_env())
    assert table.returncode == 0, table.stderr
    lines = {line.split()[2]: line for line in table.stdout.splitlines() if "cam-" in line}
    assert "2 boxes: square 1.00, square 1.00" in lines["cam-det"]
    assert "heatmap 1x1x8x8 float32, size 1x2x8x8 float32" in lines["cam-raw"]
    listed = json.loads(run_cli("results", "--results", url, "--json", env=cli_env()).stdout)
    assert {r["device"]: r["boxes"] for r in listed["results"]}["cam-det"] == det["boxes"]


# --- rows made by hand ------------------------------------------------------------------------


FACES = (Box(0, "face", 0.93, (91.0, 29.0, 135.0, 89.0)), Box(0, "face", 0.71, (10, 12, 40, 52.5)))


def task_answer(
    device: str, at: float, boxes: tuple[Box, ...] = (), outputs: tuple[RawOutput, ...] = ()
) -> tuple:
    """A hand-made answer of a detector (``boxes``) or a raw model (``outputs``): no top-k."""
    request = make_request((Hop("cloud"),), device=device, at=at)
    timing = request.timing.appended(hop_record("cloud", "c-1", at))
    return row(answer_to(request, timing, "cloud", "m", 1, Answered("out", (), boxes, outputs)))


def raw_outputs() -> tuple[RawOutput, ...]:
    """Two output tensors as a raw task's answer carries them (values and all)."""
    embedding = np.linspace(-1.0, 3.0, 128, dtype=np.float32).reshape(1, 128)
    return (raw_output("embedding", embedding), raw_output("mask", np.eye(4, dtype=np.uint8)))


def test_a_detectors_boxes_and_a_raw_models_summaries_are_kept(url):
    """Boxes as the result has them; of a raw output, its summary only (never ``data``)."""
    outputs = raw_outputs()
    with ResultsStore(url) as db:
        db.add(
            [task_answer("cam-det", 2.0, boxes=FACES), task_answer("cam-raw", 1.0, outputs=outputs)]
        )
        det, raw_row = db.query()
    assert (det["device"], det["top"], det["outputs"]) == ("cam-det", [], [])
    assert det["boxes"] == [
        {"index": 0, "label": "face", "score": 0.93, "box": [91.0, 29.0, 135.0, 89.0]},
        {"index": 0, "label": "face", "score": 0.71, "box": [10.0, 12.0, 40.0, 52.5]},
    ]
    assert (raw_row["device"], raw_row["top"], raw_row["boxes"]) == ("cam-raw", [], [])
    assert raw_row["outputs"] == [
        {"name": "embedding", "shape": [1, 128], "dtype": "float32", "min": -1.0, "max": 3.0,
         "mean": pytest.approx(1.0)},
        {"name": "mask", "shape": [4, 4], "dtype": "uint8", "min": 0.0, "max": 1.0,
         "mean": 0.25},
    ]  # fmt: skip
    assert outputs[0].data  # the answer carried the values; the row does not
    with ResultsStore(url) as db:  # a classifier's row still has no boxes and no outputs
        db.add([answer("cam-cls", "edge", 3.0)])
        (cls,) = db.query(device="cam-cls")
    assert (cls["top"][0]["label"], cls["boxes"], cls["outputs"]) == ("fox", [], [])


def test_a_store_from_before_boxes_gains_them_and_keeps_its_rows(url, monkeypatch):
    """A store made by a splitmq without migration 2: opened, it gains the columns; the
    rows it held read as answers with no boxes and no outputs."""
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    with ResultsStore(url) as db:
        assert db.schema_version == 1
    old = answer("cam-old", "edge", 5.0)[: len(COLUMNS) - 2]  # the row of schema 1
    conn = raw(url)
    marks = ", ".join(["?" if StoreUrl.parse(url).backend == "sqlite" else "%s"] * len(old))
    conn.execute(f"INSERT INTO results ({', '.join(COLUMNS[: len(old)])}) VALUES ({marks})", old)
    conn.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with ResultsStore(url) as db:
        assert db.schema_version == len(MIGRATIONS) >= 2
        db.add([task_answer("cam-new", 6.0, boxes=FACES)])
        rows = {r["device"]: r for r in db.query()}
    assert versions(url) == list(range(1, len(MIGRATIONS) + 1))
    assert (rows["cam-old"]["top"][0]["label"], rows["cam-old"]["boxes"]) == ("fox", [])
    assert rows["cam-old"]["outputs"] == []
    assert [b["score"] for b in rows["cam-new"]["boxes"]] == [0.93, 0.71]


def test_the_cli_shows_boxes_and_outputs_and_fits_80_columns(url):
    now = time.time()
    with ResultsStore(url) as db:
        db.add(
            [
                task_answer("cam-det", now - 2, boxes=FACES),
                task_answer("cam-raw", now - 1, outputs=raw_outputs()),
                task_answer("cam-empty", now - 3),  # a detector that saw nothing
                answer("cam-cls", "edge", now - 4),
            ]
        )
    env = cli_env()
    doc = json.loads(run_cli("results", "--results", url, "--json", env=env).stdout)
    by_device = {r["device"]: r for r in doc["results"]}
    assert [b["label"] for b in by_device["cam-det"]["boxes"]] == ["face", "face"]
    assert [o["name"] for o in by_device["cam-raw"]["outputs"]] == ["embedding", "mask"]
    assert all("data" not in o for o in by_device["cam-raw"]["outputs"])
    wide = run_cli("results", "--results", url, env=env)  # COLUMNS=200
    assert wide.returncode == 0, wide.stderr
    lines = {line.split()[2]: line for line in wide.stdout.splitlines() if "cam-" in line}
    assert "2 boxes: face 0.93, face 0.71" in lines["cam-det"]
    assert "embedding 1x128 float32, mask 4x4 uint8" in lines["cam-raw"]
    assert "0 boxes" in lines["cam-empty"] and "fox 0.750" in lines["cam-cls"]
    narrow = run_cli("results", "--results", url, env={**env, "COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    words = [word.rstrip(",") for word in narrow.stdout.split()]  # none cut in two
    for whole in ("cam-det", "cam-raw", "cam-empty", "cam-cls", "boxes:", "face", "0.93",
                  "0.71", "embedding", "fox", "0.750", "ms", "bytes", "330"):  # fmt: skip
        assert whole in words, (whole, narrow.stdout)
