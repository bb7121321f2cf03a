"""`splitmq dashboard` in a real headless chromium, over a real broker and a running system.

The page is driven over the Chrome DevTools Protocol (websocket-client): it must
show the devices, their plans, the tiers and the results of an edge worker, the
planner and devices streaming; list the pool with a model's cuts as a chart;
upload a model and run an image through a chosen split. The server is also
tested on its own: its JSON, its event stream, and bad posts with clear errors.
Waits poll the page or the server with ``eventually``; nothing sleeps.
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import os
import shutil
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import rows
from clitools import cli_env, run_cli, start_cli
from kit import Inbox, eventually
from PIL import Image

from splitmq.broker.launcher import Broker
from splitmq.broker.secure import SecureDir
from splitmq.dashboard.server import POST_HEADER, Dashboard
from splitmq.device.follow import FROM_PLANNER, local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.preprocess import model_input
from splitmq.shared.offline.datasets import mnist_digits
from splitmq.shared.offline.zoo import ready
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import ModelRef, WorkerTelemetry
from splitmq.shared.transport.mqtt import MqttClient
from splitmq.shared.units import Link

pytestmark = pytest.mark.slow
MODEL = "mnist-cnn"


# -- the model pool, the dashboard and the browser ------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    """A pool of its own (uploads land here) holding the real MNIST CNN, profiled and
    calibrated: from ``SPLITMQ_POOL`` (or ``.pool``), built there first if missing."""
    root = Path(os.environ.get("SPLITMQ_POOL") or Path(__file__).parent.parent / ".pool")
    source = ready(ModelPool(root), MODEL, calibration_threads=os.cpu_count() or 1)
    mine = ModelPool(tmp_path_factory.mktemp("pool"))
    shutil.copytree(source.dir, mine.root / MODEL / "1", ignore=shutil.ignore_patterns(".lock"))
    return mine


@pytest.fixture
def cfg(settings, pool):
    return settings.model_copy(update={"pool": pool.root})


@pytest.fixture
def dashboard(cfg) -> Iterator[Dashboard]:
    with Dashboard(cfg, port=0, max_upload=20_000_000) as served:
        yield served


# -- helpers ----------------------------------------------------------------------------------


def get(dash: Dashboard, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*dash.httpd.server_address[:2], timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def post(
    dash: Dashboard, path: str, fields: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A multipart form post, as the page sends it unless ``headers`` are given; a field's
    value is text or (filename, bytes)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode())
        if isinstance(value, tuple):
            body.write(
                f'; filename="{value[0]}"\r\nContent-Type: application/octet-stream'.encode()
            )
            value = value[1]
        body.write(b"\r\n\r\n" + (value.encode() if isinstance(value, str) else value) + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    sent = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    sent |= {POST_HEADER: "1"} if headers is None else headers
    conn = http.client.HTTPConnection(*dash.httpd.server_address[:2], timeout=60)
    conn.request("POST", path, body.getvalue(), sent)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def unsplit_top1(pool: ModelPool, name: str, image: np.ndarray) -> int:
    mv = pool.get(name)
    outputs = make_session(mv.model_bytes).run(
        None, {mv.manifest.input.name: model_input(image, mv)}
    )
    return int(np.argmax(outputs[-1]))


# -- the page over a running system -----------------------------------------------------------


def test_the_page_shows_the_devices_their_plans_the_tiers_and_results(
    cfg, dashboard, page, pool, topics, make_client
) -> None:
    mv = pool.get(MODEL)
    told = Inbox("the planner's plan for cam-a")
    make_client("watch-plans").subscribe(
        topics.plan("cam-a", MODEL), lambda m: m.payload and told(Plan.parse(m.payload))
    )
    digits, _ = mnist_digits()
    page.goto(dashboard.url)
    stop = threading.Event()
    fixed = make_plan(mv, 4, "int8").for_device("cam-b")

    def stream(device: Device) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            device.infer(digits[i * 97 % len(digits)])  # the digits are sorted by label

    with (
        edge_worker(cfg, "dash-edge", threads=1),
        PlannerService(cfg, "dash-planner", control=Control(dwell_s=0.0)),
        # cam-a follows the planner; cam-b runs a fixed plan to the edge
        Device(cfg, "cam-a", local_plan(mv), conditions=Emulated(Link.parse("200mbit/1ms"), 0.01,
               battery=0.8), follow=True, telemetry_period_s=0.5) as cam_a,
        Device(cfg, "cam-b", fixed, telemetry_period_s=0.5) as cam_b,
    ):  # fmt: skip
        streams = [threading.Thread(target=stream, args=(d,)) for d in (cam_a, cam_b)]
        for thread in streams:
            thread.start()
        try:
            # until the planner speaks, cam-a answers itself: those answers are results too
            eventually(
                lambda: [r for r in rows(page, "#results")
                         if r["device"] == "cam-a" and r["tier"] == "device"],
                "cam-a's own answers on the page", 20,
            )  # fmt: skip
            # cam-a's link and speed make offloading its input the planner's choice
            offload = eventually(
                lambda: next((p for p in told.items if not p.device_only), None),
                "the planner's plan to offload cam-a",
                30,
            )
            want = offload.words
            shown = eventually(
                lambda: [r for r in rows(page, "#devices") if r["device"] == "cam-a"
                         and (r["plan"], r["reason"]) == (want, offload.reason)],
                f"cam-a running {want} on the page", 20,
            )[0]  # fmt: skip
            assert shown["status"] == "online" and shown["battery"].endswith("%")
            assert shown["uplink"].endswith("bit/s") and shown["rtt"].endswith("ms")
            eventually(
                lambda: [r for r in rows(page, "#switches") if r["device"] == "cam-a"
                         and r["change"].endswith(f" → {want}") and r["reason"] == offload.reason],
                "cam-a's switch to the offload on the timeline",
            )  # fmt: skip
            cam_b_row = eventually(
                lambda: [r for r in rows(page, "#devices") if r["device"] == "cam-b"], "cam-b"
            )[0]
            assert cam_b_row["plan"].startswith(fixed.words)  # and what the planner would do
            assert cam_b_row["battery"] == "mains"
            edge = eventually(
                lambda: [r for r in rows(page, "[data-tier=edge]") if r["worker"] == "dash-edge"],
                "the edge worker in the tiers",
            )[0]
            assert edge["status"] == "online" and edge["threads"] == "1"
            assert page.text("[data-planner=dash-planner] .online") == "online"
            answered = eventually(
                lambda: [r for r in rows(page, "#results") if r["device"] == "cam-b"],
                "cam-b's results on the page",
            )
            assert answered[0]["tier"] == "edge"
            eventually(
                lambda: [r for r in rows(page, "#results") if r["device"] == "cam-a"],
                "cam-a's results, now from the edge",
            )
            eventually(
                lambda: (
                    page.js("document.querySelectorAll('#latency-chart circle.point').length")
                    and page.js("document.querySelectorAll('#bytes-chart circle.point').length")
                ),
                "points on both charts",
            )
        finally:
            stop.set()
            for thread in streams:
                thread.join(timeout=60)
    eventually(
        lambda: (
            {r["device"]: r["status"] for r in rows(page, "#devices")}
            == {"cam-a": "offline", "cam-b": "offline"}
        ),
        "both devices offline once they stopped",
    )
    # Every switch cam-a made, as it recorded them, is on the timeline (newest first).
    made = [
        (f"{s.old.words} → {s.new.words}", s.reason.removeprefix(FROM_PLANNER))
        for s in cam_a.plans.switches
    ]
    assert made and made[0][0].startswith(local_plan(mv).words)
    shown = [(r["change"], r["reason"]) for r in rows(page, "#switches") if r["device"] == "cam-a"]
    assert shown[::-1] == made
    assert page.exceptions == []


# -- the Models view ---------------------------------------------------------------------------


def test_the_models_view_lists_uploads_and_runs_an_image_through_a_split(
    dashboard, page, pool, tmp_path
) -> None:
    mv = pool.get(MODEL)
    page.goto(dashboard.url + "#models")
    eventually(lambda: [r for r in rows(page, "#pool") if r["model"] == f"{MODEL}@1"], "the pool")
    bars = eventually(
        lambda: page.js("document.querySelectorAll('#cut-chart .cut-bar').length"), "the cut chart"
    )
    assert bars == len(mv.cuts)

    # A file that is not ONNX: the page says so, naming the file.
    (tmp_path / "notes.onnx").write_bytes(b"these are not the weights you are looking for")
    page.js("document.querySelector('#upload-form [name=name]').value = 'notes'")
    page.set_files("#upload-form [name=model]", tmp_path / "notes.onnx")
    page.js("document.querySelector('#upload-form').requestSubmit()")
    eventually(
        lambda: "notes.onnx: not an ONNX model" in (page.text("#upload-status.error") or ""),
        "the upload's error on the page",
    )

    model_file, labels = tmp_path / "digits.onnx", tmp_path / "labels.txt"
    model_file.write_bytes(mv.model_bytes)
    labels.write_text("\n".join(f"digit {d}" for d in range(10)) + "\n")
    page.js("""const f = document.querySelector('#upload-form');
        f.elements.name.value = 'digits'; f.elements.mean.value = '33.3';
        f.elements.std.value = '78.6'""")
    page.set_files("#upload-form [name=model]", model_file)
    page.set_files("#upload-form [name=labels]", labels)
    page.js("document.querySelector('#upload-form').requestSubmit()")
    eventually(
        lambda: page.text("#upload-status.ok") == f"added digits v1: {len(mv.cuts)} cuts",
        "the upload to be added",
        30,
    )
    eventually(lambda: (page.text("#model-title") or "").startswith("digits v1"), "digits shown")
    assert pool.get("digits").manifest.preprocess is not None

    digits, labels = mnist_digits()  # sorted by label
    image = digits[labels == 7][0]
    (tmp_path / "digit.png").write_bytes(png(image))
    page.js("""document.querySelector('#run-cut').value = '4';
        document.querySelector('#run-cut').dispatchEvent(new Event('change'));
        document.querySelector('#run-codec').value = 'int8'""")
    page.set_files("#run-form [name=image]", tmp_path / "digit.png")
    page.js("document.querySelector('#run-form').requestSubmit()")
    top1 = eventually(lambda: page.text("#run-top1"), "the answer", 30)
    assert top1.startswith("digit 7 (") and unsplit_top1(pool, "digits", image) == 7
    sent = int(page.js("document.querySelector('#run-bytes').dataset.bytes"))
    assert 0 < sent < mv.cuts[4].bytes / 3  # int8: a quarter of fp32, and a few params
    assert page.text("#run-agrees") == "same top-1 as the unsplit model"
    assert page.exceptions == []


# -- the server on its own ---------------------------------------------------------------------


def worker_doc(worker: str, in_flight: int = 0) -> WorkerTelemetry:
    return WorkerTelemetry(
        role="edge", id=worker, ts=1.0, rps=0.0, in_flight=in_flight, errors={}, threads=2,
        queued=0, models=[ModelRef(model=MODEL, version=1)], service=[], served=0,
        duplicates=0, answered=0, forwarded={},
    )  # fmt: skip


def test_the_event_stream_pushes_validated_documents_and_skips_bad_ones(
    dashboard, topics, make_client
) -> None:
    conn = http.client.HTTPConnection(*dashboard.httpd.server_address[:2], timeout=30)
    conn.request("GET", "/api/events")
    stream = conn.getresponse()
    assert stream.status == 200 and stream.getheader("Content-Type") == "text/event-stream"

    def next_snapshot() -> dict:
        data = None
        while True:
            line = stream.fp.readline().decode().rstrip("\n")
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif line == "" and data is not None:
                return data

    assert next_snapshot()["workers"] == []
    client = make_client("publisher")
    client.publish(topics.telemetry("edge", "w1"), b"{not json", retain=True)
    forged = worker_doc("w2").to_json()  # on w1's topic: refused
    client.publish(topics.telemetry("edge", "w1"), forged, retain=True, json=True)
    client.publish(topics.result("cam"), b'{"id": "x"}')
    client.publish(topics.telemetry("edge", "w1"), worker_doc("w1", 1).to_json(), retain=True)
    seen = next_snapshot()
    while not seen["workers"]:
        seen = next_snapshot()
    assert [(w["id"], w["status"], w["doc"]["in_flight"]) for w in seen["workers"]] == [
        ("w1", "online", 1)
    ]
    assert seen["rejected"] == {"telemetry": 2, "result": 1}
    assert any("not JSON" in r["why"] for r in seen["rejections"])
    client.publish(topics.telemetry("edge", "w1"), b'{"status":"offline"}', retain=True)
    while seen["workers"][0]["status"] != "offline":
        seen = next_snapshot()
    conn.close()
    status, state = get(dashboard, "/api/state")
    assert status == 200 and state["workers"][0]["doc"]["in_flight"] == 1  # the last it said


def test_on_a_secure_broker_it_reads_as_the_monitor(tmp_path, pool) -> None:
    secure = SecureDir.init(tmp_path / "secure", devices=["cam"])
    with Broker(secure=secure.root) as broker:
        monitor = broker.user_settings("monitor", pool=pool.root)
        with (
            Dashboard(monitor, port=0) as dash,
            MqttClient(broker.user_settings("edge").connection()) as edge,
        ):
            doc = worker_doc("w-tls").to_json()
            edge.publish(monitor.topics.telemetry("edge", "w-tls"), doc, retain=True, wait=5)
            state = eventually(
                lambda: (s := get(dash, "/api/state")[1])["workers"] and s, "telemetry over TLS"
            )
    assert state["connected"] and [w["id"] for w in state["workers"]] == ["w-tls"]


def test_bad_posts_get_clear_errors(dashboard, pool) -> None:
    onnx = ("m.onnx", pool.get(MODEL).model_bytes)
    by_page = {POST_HEADER: "1"}
    cases = [
        ("/api/models", {"name": "x", "model": onnx}, {}, 403, "X-Splitmq-Dashboard"),
        ("/api/models", {"name": "x", "model": onnx}, {**by_page, "Origin": "http://evil.test"},
         403, "a post from a page at http://evil.test"),
        ("/api/models", {"name": "x", "model": onnx}, {**by_page, "Host": "evil.test:8080"}, 403,
         "is not for this dashboard"),
        ("/api/models", {"name": "bad name!", "model": onnx}, by_page, 400, "bad model name"),
        ("/api/models", {"name": "x", "model": ("w.onnx", b"\x08\x07junk")}, by_page, 400,
         "w.onnx: not an ONNX model"),
        ("/api/models", {"name": "x"}, by_page, 400, "choose an .onnx model file"),
        ("/api/models", {"name": "x", "model": onnx, "mean": "1"}, by_page, 400, "both the mean"),
        ("/api/models", {"name": "x", "model": onnx, "mean": "1,2", "std": "1"}, by_page, 400,
         "give one number per channel"),
        ("/api/run", {"model": "nope", "cut": "1", "codec": "int8", "image": ("a.png", b"x")},
         by_page, 404, "no model 'nope'"),
        ("/api/run", {"model": MODEL, "cut": "99", "codec": "int8", "image": ("a.png", b"x")},
         by_page, 400, "has no cut 99"),
        ("/api/run", {"model": MODEL, "cut": "4", "codec": "jpeg:80", "image": ("a.png", b"x")},
         by_page, 400, "needs cut 0"),
        ("/api/run", {"model": MODEL, "cut": "4", "codec": "int8", "image": ("a.png", b"GIF89a")},
         by_page, 400, "not a JPEG or PNG image"),
    ]  # fmt: skip
    for path, fields, headers, status, words in cases:
        got, doc = post(dashboard, path, fields, headers)
        assert (got, words in doc["error"]) == (status, True), (path, fields.keys(), doc)
    gif = io.BytesIO()
    Image.new("L", (28, 28)).save(gif, format="GIF")
    fields = {"model": MODEL, "cut": "4", "codec": "int8", "image": ("a.gif", gif.getvalue())}
    got, doc = post(dashboard, "/api/run", fields)
    assert got == 400 and "not a JPEG or PNG image" in doc["error"]
    conn = http.client.HTTPConnection(*dashboard.httpd.server_address[:2], timeout=30)
    conn.putrequest("POST", "/api/models")
    conn.putheader(POST_HEADER, "1")
    conn.putheader("Content-Length", str(dashboard.max_upload + 1))
    conn.endheaders()  # and no body: the size alone is refused
    response = conn.getresponse()
    assert response.status == 413
    assert "over the dashboard's limit of 20.0 MB" in json.loads(response.read())["error"]
    assert "x" not in pool.names()  # nothing was added
    status, models = get(dashboard, "/api/models")
    assert status == 200 and f"{MODEL}@1" in [m["ref"] for m in models["models"]]
    assert get(dashboard, "/api/models/nope@3")[0] == 404
    assert get(dashboard, "/static/../server.py")[0] == 404


def test_the_command_serves_the_page_and_mistakes_are_one_line(cfg) -> None:
    proc = start_cli(
        "dashboard", "--port", "0", env=cli_env(cfg), stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(url + "api/state", timeout=10) as r:
            assert json.load(r)["connected"] is True
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"<title>splitmq dashboard</title>" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    bad = run_cli(  # 0 s: one attempt (by default it waits for its broker)
        "dashboard", "--port", "0", "--broker", "127.0.0.1:1", "--connect-timeout", "0s",
        env=cli_env(cfg),
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "cannot connect to the MQTT broker" in bad.stderr
