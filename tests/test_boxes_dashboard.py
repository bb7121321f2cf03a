"""The dashboard with detectors and raw models, in a real headless chromium over the
session's broker: recent results of every task, an upload with a model config (a bad
one refused in one line), and a try-out that draws a detector's boxes on the image.
The model is the tiny real detector of test_boxes_model. Waits poll; nothing sleeps.
"""

from __future__ import annotations

import http.client
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import Page, rows
from kit import eventually, hop_record, make_request
from test_boxes_model import DETECT_TOML, RAW_TOML, picture, square_files

from splitmq.dashboard.server import POST_HEADER, Dashboard
from splitmq.shared.model.outputs import raw_output
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.results import Box, Result, TopK, latency_breakdown, pack_result
from splitmq.shared.protocol.wire import Hop

SPLIT = [229, 72, 77, 255]  # the colour of the split's boxes (models.js)
LABELS = ("l.txt", b"square\n")


@pytest.fixture
def pool(tmp_path: Path) -> ModelPool:
    return ModelPool(tmp_path / "pool")


@pytest.fixture
def dashboard(settings, pool) -> Iterator[Dashboard]:
    with Dashboard(settings.model_copy(update={"pool": pool.root}), port=0) as served:
        yield served


def post(dash: Dashboard, fields: dict[str, Any]) -> tuple[int, Any]:
    """An upload as the page posts it; a field's value is text or (filename, bytes)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode())
        if isinstance(value, tuple):
            body.write(f'; filename="{value[0]}"'.encode())
            value = value[1]
        body.write(b"\r\n\r\n" + (value.encode() if isinstance(value, str) else value) + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", POST_HEADER: "1"}
    conn = http.client.HTTPConnection(*dash.httpd.server_address[:2], timeout=60)
    conn.request("POST", "/api/models", body.getvalue(), headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def result(device: str, **answer: Any) -> bytes:
    """A result document as an edge worker publishes it, answering with ``answer``."""
    request = make_request((Hop("edge"),), device=device)
    t = request.timing.device.t_sent
    latency = latency_breakdown(device, request.timing.appended(hop_record("edge", "e-1", t)))
    return pack_result(
        Result(request.id, device, "m", 1, **{"top": (), **answer}, tier="edge", exit="out",
               latency=latency, bytes=330, t_sent=t)
    )  # fmt: skip


def upload_in_page(page: Page, name: str, files: dict[str, Path]) -> None:
    page.js(f"document.querySelector('#upload-form').reset();"
            f"document.querySelector('#upload-form').elements.name.value = '{name}'")  # fmt: skip
    for field, path in files.items():
        page.set_files(f"#upload-form [name={field}]", path)
    page.js("document.querySelector('#upload-form').requestSubmit()")


# -- the Live view ------------------------------------------------------------------------------


def test_recent_results_show_boxes_and_raw_outputs(dashboard, page, topics, make_client) -> None:
    faces = (Box(0, "face", 0.71, (10, 12, 40, 52)), Box(0, "face", 0.93, (91, 29, 135, 89)))
    tensors = (
        raw_output("embedding", np.zeros((1, 128), np.float32)),
        raw_output("mask", np.eye(4, dtype=np.uint8)),
    )
    page.goto(dashboard.url)
    client = make_client("results")
    sent = {
        "cam-det": result("cam-det", boxes=faces),
        "cam-none": result("cam-none"),  # a detector that found nothing
        "cam-raw": result("cam-raw", outputs=tensors),
        "cam-cls": result("cam-cls", top=(TopK(2, "fox", 0.75),)),
    }
    for device, payload in sent.items():
        client.publish(topics.result(device), payload, qos=1)
    shown = eventually(
        lambda: (
            (got := {r["device"]: r["answer"] for r in rows(page, "#results")}).keys()
            >= sent.keys()
            and got
        ),
        "the four results on the page",
    )
    assert shown["cam-det"] == "2 boxes, best face (0.93)"  # the best, not the first
    assert shown["cam-none"] == "no boxes"
    assert shown["cam-raw"] == "embedding 1×128, mask 4×4"
    assert shown["cam-cls"] == "fox (0.75)"
    state = dashboard.state.snapshot()
    det = next(r for r in state["results"] if r["device"] == "cam-det")
    assert (det["top"], det["boxes"], det["best_box"]["score"]) == (None, 2, 0.93)
    assert dashboard.state.rejected == {} and page.exceptions == []


# -- uploads with a config ----------------------------------------------------------------------


def test_a_bad_config_is_one_line_and_a_good_one_adds_the_detector(
    dashboard, page, pool, tmp_path
) -> None:
    model, config, labels = square_files(tmp_path / "files")
    bad = tmp_path / "bad.toml"
    bad.write_text(DETECT_TOML.replace("stride = 4", "stride = 0"))
    page.goto(dashboard.url + "#models")
    upload_in_page(page, "squares", {"model": model, "config": bad, "labels": labels})
    error = eventually(lambda: page.text("#upload-status.error"), "the config's error", 30)
    assert error.startswith("bad.toml: output.detect.stride") and "\n" not in error
    assert pool.names() == []

    upload_in_page(page, "squares", {"model": model, "config": config, "labels": labels})
    eventually(
        lambda: (page.text("#upload-status.ok") or "").startswith("added squares v1: "),
        "the detector added",
        30,
    )
    mv = pool.get("squares")
    assert mv.manifest.output.task == "detect" and mv.labels == ["square"]
    assert mv.manifest.preprocess is not None and mv.manifest.preprocess.resize == 48
    eventually(
        lambda: (page.text("#model-title") or "").startswith("squares v1 (detect): "),
        "the detector shown",
    )

    # The try-out: the boxes listed, and drawn over the image in its own pixels.
    image = tmp_path / "squares.png"
    image.write_bytes(picture(128, 96, [(56, 32, 64, 40)]))
    page.js("""document.querySelector('#run-cut').value = '2';
        document.querySelector('#run-cut').dispatchEvent(new Event('change'));
        document.querySelector('#run-codec').value = 'int8'""")
    page.set_files("#run-form [name=image]", image)
    page.js("document.querySelector('#run-form').requestSubmit()")
    top = eventually(lambda: page.text("#run-top1"), "the boxes", 30)
    assert top == "1 box, best square (1.00)"
    assert page.js("[...document.querySelectorAll('#run-boxes li')].map(li => li.textContent)") == [
        "square (1.00) at [56, 32, 64, 40]"
    ]
    assert page.text("#run-agrees") == "the same boxes as the unsplit model (1 box)"
    canvas = "document.querySelector('#run-canvas')"
    assert page.js(f"[{canvas}.width, {canvas}.height]") == [128, 96]
    eventually(lambda: page.js("document.querySelector('.picture img').complete"), "the image")
    # the canvas lies exactly over the image, whatever size the page shows it at
    assert page.js(f"""JSON.stringify({canvas}.getBoundingClientRect())
        === JSON.stringify(document.querySelector('.picture img').getBoundingClientRect())""")
    pixel = f"(x, y) => Array.from({canvas}.getContext('2d').getImageData(x, y, 1, 1).data)"
    for x, y in ((56, 36), (63, 36), (60, 32), (60, 39)):  # on each side of the square
        assert page.js(f"({pixel})({x}, {y})") == SPLIT, (x, y)
    for x, y in ((60, 36), (40, 60), (100, 36)):  # inside it, and away from it
        assert page.js(f"({pixel})({x}, {y})")[3] == 0, (x, y)
    assert page.exceptions == []


def test_a_raw_model_uploaded_with_its_config_shows_its_tensors(
    dashboard, page, pool, tmp_path
) -> None:
    model, config, _ = square_files(tmp_path / "files", RAW_TOML)
    page.goto(dashboard.url + "#models")
    upload_in_page(page, "raw-squares", {"model": model, "config": config})
    eventually(
        lambda: (page.text("#model-title") or "").startswith("raw-squares v1 (raw): "),
        "the raw model added and shown",
        30,
    )
    assert pool.get("raw-squares").manifest.output.task == "raw"
    image = tmp_path / "one.png"
    image.write_bytes(picture(32, 32, [(4, 4, 8, 8)]))
    page.set_files("#run-form [name=image]", image)
    page.js("document.querySelector('#run-form').requestSubmit()")
    listed = eventually(lambda: rows(page, "#run-outputs"), "the tensors", 30)
    assert [(r["name"], r["shape"]) for r in listed] == [
        ("heatmap", "[1,1,8,8]"),
        ("size", "[1,2,8,8]"),
    ]
    assert page.text("#run-agrees") == "the same tensors as the unsplit model (within 1%)"
    assert page.exceptions == []


@pytest.mark.parametrize(
    ("config", "extra", "words"),
    [
        (b"[input\n", {}, "model config c.toml: not TOML"),
        (b"\xff\xfe", {}, "model config c.toml: not TOML"),
        (DETECT_TOML.replace('task = "detect"', 'task = "segment"').encode(), {"labels": LABELS},
         "c.toml: output.task must be one of classify, detect, raw, got 'segment'"),
        (DETECT_TOML.encode(), {}, "c.toml: output.labels names 'labels.txt': choose that file"),
        (DETECT_TOML.replace("labels.txt", "/etc/passwd").encode(), {},
         "output.labels names '/etc/passwd': choose that file"),  # never the server's
        (DETECT_TOML.replace("crop = 32", "crop = 40").encode(), {"labels": LABELS},
         "the config of x: input.crop is [40, 40] but the model's input"),
        (DETECT_TOML.encode(), {"labels": ("l.txt", b"a\nb\n")},
         "output.labels has 2 labels for the 1 classes"),
        (DETECT_TOML.encode(), {"labels": ("l.txt", b"sq\n"), "mean": "1"},
         "leave mean and std empty"),
    ],
)  # fmt: skip
def test_config_mistakes_are_400_with_one_line(dashboard, pool, tmp_path, config, extra, words):
    model, _, _ = square_files(tmp_path)
    fields = {"name": "x", "model": ("m.onnx", model.read_bytes()), "config": ("c.toml", config)}
    status, doc = post(dashboard, {**fields, **extra})
    assert (status, words in doc["error"]) == (400, True), doc
    assert "\n" not in doc["error"] and "Traceback" not in doc["error"]
    assert pool.names() == []


def test_a_config_takes_the_uploaded_labels_whatever_file_it_names(dashboard, pool, tmp_path):
    """The labels a config names are the file uploaded beside it, never a file of the
    server's; the same file with the same config is the same version."""
    model, _, _ = square_files(tmp_path)
    fields = {
        "name": "cfg",
        "model": ("m.onnx", model.read_bytes()),
        "config": ("squares.toml", DETECT_TOML.replace("labels.txt", "/etc/passwd").encode()),
        "labels": ("mine.txt", b"my square\n"),
    }
    status, doc = post(dashboard, fields)
    assert status == 201 and (doc["task"], doc["images"], doc["new"]) == ("detect", True, True)
    mv = pool.get("cfg")
    assert mv.labels == ["my square"] and mv.manifest.output.detect.stride == 4
    status, again = post(dashboard, fields)
    assert status == 201 and (again["version"], again["new"]) == (1, False)
