"""Model updates without restarts: a new version announced on ``model/<name>`` is served
by running workers and taken up by the planner, while a device streams, losing nothing."""

from __future__ import annotations

import io
import json
import shutil
import threading
from concurrent.futures import Future

import onnx
import pytest
from clitools import cli_env, run_cli
from kit import eventually
from PIL import Image

from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.errors import WireError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.datasets import photos
from splitmq.shared.protocol.announce import ModelAnnouncement
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.transport.announce import announce
from splitmq.shared.units import Link

pytestmark = pytest.mark.slow
MODEL = "efficientnet-lite0"


@pytest.fixture
def pool(tmp_path, real_pool) -> ModelPool:
    """A pool of its own holding the real EfficientNet-Lite0 v1, profiled and calibrated
    (a slow device on a fast link offloads it, whatever this host's speed)."""
    built = real_pool.get(MODEL)  # the newest there, copied as version 1
    v1 = tmp_path / "pool" / MODEL / "1"
    shutil.copytree(built.dir, v1, ignore=shutil.ignore_patterns("partitions"))
    manifest = json.loads((v1 / "manifest.json").read_text())
    (v1 / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    return ModelPool(tmp_path / "pool")


def test_a_new_version_is_taken_up_while_a_device_streams(
    settings, pool, tmp_path, make_client, inbox
) -> None:
    cfg = settings.model_copy(update={"pool": pool.root})
    v1 = pool.get(MODEL)
    frames = photos(4, seed=5)
    camera, answers = make_client("camera"), inbox("answers to the camera")
    camera.subscribe(cfg.topics.result("camera"), answers, qos=1)
    photo = io.BytesIO()
    Image.fromarray(frames[0]).save(photo, format="JPEG")
    futures: list[Future] = []
    stop = threading.Event()
    with (
        edge_worker(cfg, "edge-up", threads=1) as worker,
        PlannerService(cfg, "pl-up", control=Control(dwell_s=0.0)),
        Device(
            cfg,
            "streamer",
            local_plan(v1),
            conditions=Emulated(Link.parse("200mbit/2ms"), 0.05),
            follow=True,
            telemetry_period_s=0.5,
            window=2,
        ) as dev,
    ):

        def stream() -> None:
            while not stop.is_set():
                futures.append(dev.submit(frames[len(futures) % len(frames)]))

        streaming = threading.Thread(target=stream, daemon=True)
        streaming.start()
        try:
            eventually(lambda: not dev.plan.device_only, "v1 offloaded to the edge", 30)
            # A frame runs the newest version the edge knows: v1 now, v2 once announced.
            camera.publish(cfg.topics.frame(MODEL, "camera"), photo.getvalue(), qos=1)
            assert unpack_result(answers.wait(1, timeout=30)[0].payload).version == 1
            # v2: the same network, new bytes; added without announcing, given v1's profile
            # and calibration (the same graph), then announced as an operator would.
            changed = onnx.load(v1.dir / "model.onnx")
            changed.doc_string = "v2: retrained"
            onnx.save(changed, tmp_path / "v2.onnx")
            env = cli_env(cfg, pool.root)
            added = run_cli(
                "pool", "add", str(tmp_path / "v2.onnx"), "--name", MODEL, "--no-announce",
                env=env,
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            v2 = pool.get(MODEL, 2)
            v2.save_profile(v1.manifest.profiles[-1])
            assert v1.manifest.calibration is not None
            v2.save_calibration(v1.manifest.calibration)
            said = run_cli("pool", "announce", MODEL, env=env)
            assert said.returncode == 0 and f"{MODEL} v2" in said.stdout, said.stderr
            eventually(lambda: dev.mv.version == 2, "the device on v2", 30)
            camera.publish(cfg.topics.frame(MODEL, "camera"), photo.getvalue(), qos=1)
            assert unpack_result(answers.wait(2, timeout=30)[1].payload).version == 2
            eventually(lambda: (MODEL, 2) in worker.sessions.loaded(), "v2 served", 30)
            served = worker.stats.snapshot_counts().get("answered_edge", 0)
            eventually(
                lambda: worker.stats.snapshot_counts().get("answered_edge", 0) > served + 3,
                "more answers on v2",
                30,
            )
        finally:
            stop.set()
            streaming.join(timeout=30)
        answers = [f.result(timeout=60) for f in list(futures)]  # raises on any failure
    assert len(answers) == len(futures) > 10
    assert not dev.plan.device_only and dev.plan.version == 2
    assert any(s.old.version == 1 and s.new.version == 2 for s in dev.plans.switches)


def test_a_forged_announcement_is_refused_and_nothing_moves(settings, pool, caplog) -> None:
    cfg = settings.model_copy(update={"pool": pool.root})
    with PlannerService(cfg, "pl-forged") as planner:
        announce(cfg.connection(), cfg.topics, MODEL, 1, "0" * 64)  # our pool's v1 has other bytes
        announce(
            cfg.connection(), cfg.topics, MODEL, 7, pool.get(MODEL).manifest.sha256
        )  # no such version
        eventually(lambda: planner.errors["bad_model"] == 2, "both announcements refused")
    assert "not the announced one" in caplog.text and "no version 7" in caplog.text


def test_announcements_are_checked_documents() -> None:
    good = ModelAnnouncement(name="chain", version=2, sha256="a" * 64, ts=1.0)
    assert ModelAnnouncement.parse(good.to_json()) == good
    for bad in (
        {"name": "../x", "version": 1, "sha256": "a" * 64, "ts": 1.0},
        {"name": "chain", "version": 0, "sha256": "a" * 64, "ts": 1.0},
        {"name": "chain", "version": 1, "sha256": "xyz", "ts": 1.0},
    ):
        with pytest.raises(WireError, match=r"name|version|sha256"):
            ModelAnnouncement.parse(bad)
